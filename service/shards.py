"""WebDataset tar shards, written as a stream of byte chunks with fixed member metadata.

Each image is two members, `<key>.png` (or `.dcm`) and `<key>.json`, with the key the zero-padded
image index. Member mtimes, owners and modes are fixed, so a shard is a pure function of its images.
"""

from __future__ import annotations

import hashlib
import json
import tarfile

BLOCK = 512


def shard_name(shard_index: int) -> str:
    return f"shard-{shard_index:06d}.tar"


def image_key(index: int) -> str:
    return f"{index:09d}"


def canonical_json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def tar_member(name: str, data: bytes) -> bytes:
    """One ustar member: header, data, padding to the 512-byte block."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o444, 0, 0
    info.uname = info.gname = ""
    padding = -len(data) % BLOCK
    return info.tobuf(tarfile.USTAR_FORMAT) + data + b"\0" * padding


def tar_end() -> bytes:
    return b"\0" * (2 * BLOCK)


class Digest:
    """Running SHA-256 and size of bytes as they stream out."""

    def __init__(self) -> None:
        self.sha, self.size = hashlib.sha256(), 0

    def add(self, chunk: bytes) -> bytes:
        self.sha.update(chunk)
        self.size += len(chunk)
        return chunk
