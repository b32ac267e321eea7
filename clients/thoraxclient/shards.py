"""Reading WebDataset shards as the gateway writes them: `<key>.png` (or `.dcm`) and `<key>.json` per
image. PNGs decode with a small reader of 8-bit greyscale (what the gateway writes), so the SDK needs
no imaging library."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Sample:
    """One synthetic radiograph: `image` uint8 [H, W] (None for DICOM: see `data`), its labels by name,
    the shard's JSON record (model, seed, index, ...), and the encoded image bytes."""

    key: str
    image: np.ndarray | None
    labels: dict[str, float]
    metadata: dict
    data: bytes
    extension: str


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def iter_members(data: bytes | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample of a shard, in order."""
    fileobj = io.BytesIO(data) if isinstance(data, bytes) else open(data, "rb")
    with fileobj, tarfile.open(fileobj=fileobj, mode="r:") as tar:
        current, members = None, {}
        for info in tar:
            if not info.isfile():
                continue
            key, _, ext = info.name.partition(".")
            if key != current and members:
                yield current, members
                members = {}
            current = key
            members[ext] = tar.extractfile(info).read()
        if members:
            yield current, members


def iter_shard(data: bytes | Path, decode: bool = True) -> Iterator[Sample]:
    """The samples of one shard (bytes or a file)."""
    for key, members in iter_members(data):
        record = json.loads(members["json"])
        ext = "png" if "png" in members else "dcm"
        encoded = members[ext]
        image = decode_png(encoded) if decode and ext == "png" else None
        yield Sample(key, image, dict(record.get("labels", {})), record, encoded, ext)


def decode_png(data: bytes) -> np.ndarray:
    """An 8-bit greyscale, non-interlaced PNG -> uint8 [H, W]."""
    if not data.startswith(_PNG_SIGNATURE):
        raise ValueError("not a PNG")
    pos, idat, header = len(_PNG_SIGNATURE), [], None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if header is None:
        raise ValueError("PNG without IHDR")
    width, height, depth, colour, _, _, interlace = header
    if (depth, colour, interlace) != (8, 0, 0):
        raise ValueError(
            f"only 8-bit greyscale non-interlaced PNGs are read (depth {depth}, colour {colour})"
        )
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8).reshape(height, width + 1)
    out = np.zeros((height, width), np.uint8)
    prev = np.zeros(width, np.int32)
    for y in range(height):
        kind, row = raw[y, 0], raw[y, 1:].astype(np.int32)
        if kind == 1:  # Sub: each byte adds the decoded one on its left
            row = np.cumsum(row) & 0xFF
        elif kind == 2:  # Up
            row = (row + prev) & 0xFF
        elif kind in (3, 4):  # Average, Paeth: sequential along the row
            row = _unfilter_sequential(int(kind), row.tolist(), prev.tolist())
        elif kind != 0:
            raise ValueError(f"PNG filter type {kind} unknown")
        out[y] = row
        prev = np.asarray(row, np.int32)
    return out


def _unfilter_sequential(kind: int, row: list[int], prev: list[int]) -> np.ndarray:
    left = 0
    for x, value in enumerate(row):
        up = prev[x]
        if kind == 3:
            left = (value + ((left + up) >> 1)) & 0xFF
        else:
            upper_left = prev[x - 1] if x else 0
            p = left + up - upper_left
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - upper_left)
            predictor = left if pa <= pb and pa <= pc else up if pb <= pc else upper_left
            left = (value + predictor) & 0xFF
        row[x] = left
    return np.asarray(row, np.int32)
