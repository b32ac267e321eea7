"""Storage in any S3-compatible server through the minio SDK (the one place that imports minio).

A shard streams as a multipart upload of unknown length: parts of `THORAX_S3_PART_SIZE` bytes are read
from the encoder as it goes, so a shard is never held whole in memory, and the object is published only
when the upload completes.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from datetime import timedelta

import urllib3
from minio import Minio
from minio.error import MinioException, S3Error

from service.settings import Settings
from service.storage.base import StorageError

_MISSING = ("NoSuchKey", "NoSuchObject")
_TRANSIENT = (MinioException, urllib3.exceptions.HTTPError, OSError)


class _ChunkReader(io.RawIOBase):
    """A file-like view of an iterator of byte chunks, for minio's `put_object(length=-1)`."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks, self._pending = iter(chunks), b""

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        parts, have = [self._pending], len(self._pending)
        while size < 0 or have < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            parts.append(chunk)
            have += len(chunk)
        data = b"".join(parts)
        if size < 0:
            self._pending = b""
            return data
        self._pending = data[size:]
        return data[:size]


def _client(settings: Settings, http: urllib3.PoolManager) -> Minio:
    """A client of the gateway's own S3 endpoint over the given connection pool."""
    return Minio(
        endpoint=settings.s3_endpoint,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key,
        secure=settings.s3_secure,
        region=settings.s3_region,
        http_client=http,
    )


class S3Storage:
    def __init__(self, settings: Settings) -> None:
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=5.0, read=60.0),
            retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
            maxsize=8,
        )
        self.client = _client(settings, http)
        # Presigning is local arithmetic once the region is known; the public endpoint need not be
        # reachable from the gateway, so its client is given a region instead of asking the server.
        self.signer = self.client
        if settings.s3_public_endpoint:
            self.signer = Minio(
                endpoint=settings.s3_public_endpoint,
                access_key=settings.s3_access_key,
                secret_key=settings.s3_secret_key,
                secure=settings.s3_secure if settings.s3_public_secure is None else settings.s3_public_secure,
                region=settings.s3_region or "us-east-1",
            )
        # The readiness probe's own client: a stalled server costs it seconds, not minutes of retries.
        probe_http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=2.0, read=4.0), retries=urllib3.Retry(total=0), maxsize=1
        )
        self.probe_client = _client(settings, probe_http)
        self.bucket = settings.s3_bucket
        self.part_size = settings.s3_part_size
        self.location = f"s3://{self.bucket}"

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except S3Error as exc:
            raise StorageError(f"{what}: {exc.code}: {exc.message}") from exc
        except _TRANSIENT as exc:
            raise StorageError(f"{what}: {type(exc).__name__}: {exc}") from exc

    def check(self) -> None:
        if not self._call("checking the bucket", self.probe_client.bucket_exists, bucket_name=self.bucket):
            raise StorageError(f"bucket {self.bucket} does not exist")

    def prepare(self) -> None:
        if not self._call("checking the bucket", self.client.bucket_exists, bucket_name=self.bucket):
            self._call("creating the bucket", self.client.make_bucket, bucket_name=self.bucket)

    def size(self, key: str) -> int | None:
        try:
            return self.client.stat_object(bucket_name=self.bucket, object_name=key).size
        except S3Error as exc:
            if exc.code in _MISSING:
                return None
            raise StorageError(f"reading {key}: {exc.code}: {exc.message}") from exc
        except _TRANSIENT as exc:
            raise StorageError(f"reading {key}: {type(exc).__name__}: {exc}") from exc

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call(
            f"writing {key}",
            self.client.put_object,
            bucket_name=self.bucket,
            object_name=key,
            data=io.BytesIO(data),
            length=len(data),
        )

    def put_stream(self, key: str, chunks: Iterable[bytes]) -> None:
        self._call(
            f"uploading {key}",
            self.client.put_object,
            bucket_name=self.bucket,
            object_name=key,
            data=_ChunkReader(chunks),
            length=-1,
            part_size=self.part_size,
        )

    def get_bytes(self, key: str) -> bytes | None:
        try:
            response = self.client.get_object(bucket_name=self.bucket, object_name=key)
        except S3Error as exc:
            if exc.code in _MISSING:
                return None
            raise StorageError(f"reading {key}: {exc.code}: {exc.message}") from exc
        except _TRANSIENT as exc:
            raise StorageError(f"reading {key}: {type(exc).__name__}: {exc}") from exc
        try:
            return response.read()
        except _TRANSIENT as exc:
            raise StorageError(f"reading {key}: {exc}") from exc
        finally:
            response.close()
            response.release_conn()

    def iter_bytes(self, key: str) -> Iterator[bytes]:
        response = self._call(
            f"reading {key}", self.client.get_object, bucket_name=self.bucket, object_name=key
        )
        try:
            yield from response.stream(1 << 20)
        finally:
            response.close()
            response.release_conn()

    def delete(self, key: str) -> None:
        self._call(f"removing {key}", self.client.remove_object, bucket_name=self.bucket, object_name=key)

    def list(self, prefix: str) -> list[str]:
        objects = self._call(
            f"listing {prefix or '/'}",
            lambda: list(
                self.client.list_objects(bucket_name=self.bucket, prefix=prefix or None, recursive=True)
            ),
        )
        return sorted(o.object_name for o in objects if not o.is_dir)

    def list_folder(self, folder: str) -> list[str]:
        folder = folder.rstrip("/") + "/" if folder.strip("/") else ""
        objects = self._call(
            f"listing {folder or '/'}",
            lambda: list(  # with the delimiter: deeper keys come back as folders, skipped here
                self.client.list_objects(bucket_name=self.bucket, prefix=folder or None, recursive=False)
            ),
        )
        return sorted(o.object_name for o in objects if not o.is_dir)

    def presigned_url(self, key: str, expires_seconds: int) -> str | None:
        # Signed for THORAX_S3_PUBLIC_ENDPOINT when set, else for the gateway's own S3 address.
        return self._call(
            f"presigning {key}",
            self.signer.presigned_get_object,
            bucket_name=self.bucket,
            object_name=key,
            expires=timedelta(seconds=expires_seconds),
        )
