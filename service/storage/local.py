"""Storage in a local folder (the default): `THORAX_STORAGE_DIR`, `./thorax-data` unless set."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from service.storage.base import StorageError

_TEMP = ".partial-"


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.location = str(self.root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise StorageError(f"key {key!r} leaves the storage folder")
        return path

    def check(self) -> None:
        folder = self.root  # not there yet: usable when the folder it goes in is (the first write makes it)
        while not folder.exists() and folder.parent != folder:
            folder = folder.parent
        if not folder.is_dir():
            raise StorageError(f"{folder} is not a folder")
        if not os.access(folder, os.W_OK):
            raise StorageError(f"{folder} is not writable")

    def prepare(self) -> None:
        """Create the folder, and remove the temporary files of writes that a killed process left (one
        gateway or `thorax generate` per folder: another's writes in progress would go too)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            for leftover in self.root.rglob(f"{_TEMP}*"):
                if leftover.is_file():
                    leftover.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"{self.root}: {exc}") from exc
        self.check()

    def size(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"reading {key}: {exc}") from exc

    def put_bytes(self, key: str, data: bytes) -> None:
        self.put_stream(key, [data])

    def put_stream(self, key: str, chunks: Iterable[bytes]) -> None:
        path = self._path(key)
        temp = path.with_name(f"{_TEMP}{uuid.uuid4().hex}-{path.name}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(temp, "wb") as fh:
                for chunk in chunks:
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(temp, path)
        except OSError as exc:
            raise StorageError(f"writing {key}: {exc}") from exc
        finally:
            with contextlib.suppress(OSError):  # its folder may not exist; the write's error is the news
                temp.unlink(missing_ok=True)

    def get_bytes(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"reading {key}: {exc}") from exc

    def iter_bytes(self, key: str) -> Iterator[bytes]:
        with open(self._path(key), "rb") as fh:
            yield from iter(lambda: fh.read(1 << 20), b"")

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"removing {key}: {exc}") from exc

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return []
        keys = []
        for path in base.rglob("*"):
            if path.is_file() and not path.name.startswith(_TEMP):
                keys.append(path.relative_to(self.root).as_posix())
        return sorted(keys)

    def list_folder(self, folder: str) -> list[str]:
        base = self._path(folder) if folder.strip("/") else self.root
        try:
            if not base.is_dir():
                return []
            names = [p.name for p in base.iterdir() if p.is_file() and not p.name.startswith(_TEMP)]
        except OSError as exc:
            raise StorageError(f"listing {folder}: {exc}") from exc
        return sorted((base / name).relative_to(self.root).as_posix() for name in names)

    def presigned_url(self, key: str, expires_seconds: int) -> str | None:
        return None  # a folder has no URLs of its own: the gateway's shard route serves it
