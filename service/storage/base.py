"""The storage interface the jobs use; keys are `/`-separated paths relative to the storage root."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol


class StorageError(Exception):
    """Storage could not be reached or refused an operation; a job retries it with backoff."""


class Storage(Protocol):
    location: str  # for people: a folder or s3://bucket

    def check(self) -> None:
        """Raise StorageError unless storage answers and its bucket or folder exists; creates nothing
        (the readiness probe calls it)."""

    def prepare(self) -> None:
        """Create the bucket or folder when it is missing (once, at start-up), then check."""

    def size(self, key: str) -> int | None:
        """The object's size in bytes, or None when there is none."""

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def put_stream(self, key: str, chunks: Iterable[bytes]) -> None:
        """Write an object from a stream of chunks; it appears only once the stream has ended."""

    def get_bytes(self, key: str) -> bytes | None:
        """The object's bytes, or None when there is none."""

    def iter_bytes(self, key: str) -> Iterator[bytes]: ...

    def delete(self, key: str) -> None:
        """Remove an object; one that is not there is no error."""

    def list(self, prefix: str) -> list[str]:
        """Every key under a prefix, recursively, sorted."""

    def list_folder(self, folder: str) -> list[str]:
        """The keys directly in a folder (`a/b/` lists `a/b/x`, not `a/b/c/y`), sorted."""

    def presigned_url(self, key: str, expires_seconds: int) -> str | None:
        """A URL that reads the object without credentials until it expires, or None when this storage
        has none (the gateway then serves the bytes itself)."""
