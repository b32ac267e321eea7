"""Where jobs go: one interface, two adapters (a local folder, and S3 through the minio SDK).

A shard becomes visible only when it is complete: the folder adapter writes a hidden temporary file and
renames it, the S3 adapter streams a multipart upload that the server publishes on completion.
"""

from __future__ import annotations

from service.settings import Settings
from service.storage.base import Storage, StorageError

__all__ = ["Storage", "StorageError", "open_storage"]


def open_storage(settings: Settings) -> Storage:
    """S3 when an endpoint is configured, else the local folder."""
    if settings.s3_endpoint:
        from service.storage.s3 import S3Storage

        return S3Storage(settings)
    from service.storage.local import LocalStorage

    return LocalStorage(settings.storage_dir)
