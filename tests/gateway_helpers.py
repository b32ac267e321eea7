"""What the gateway tests share: reading shards as a user would, and waiting for jobs with a bound."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

TERMINAL = ("succeeded", "failed", "cancelled")


def wait_for_job(get_status: Callable[[], dict], timeout: float = 120.0, until=TERMINAL) -> dict:
    """Poll a job's status until its state is in `until`; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        status = get_status()
        if status["state"] in until:
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"job still {status['state']} after {timeout}s: {status}")
        time.sleep(0.1)


def wait_until(check: Callable[[], object], timeout: float = 60.0, what: str = "condition"):
    """Call `check` until it returns something truthy (and return that); fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached after {timeout}s")
        time.sleep(0.1)
    return result


def tar_members(data: bytes) -> dict[str, bytes]:
    """name -> bytes of every member of a tar, in order."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def samples(shards: list[bytes]) -> dict[str, dict[str, bytes]]:
    """WebDataset samples of some shards: key -> {extension: bytes}."""
    out: dict[str, dict[str, bytes]] = {}
    for data in shards:
        for name, member in tar_members(data).items():
            key, _, ext = name.partition(".")
            out.setdefault(key, {})[ext] = member
    return out


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_with_webdataset(paths: list[Path]) -> list[dict]:
    """The shards as the `webdataset` package reads them, unchanged: decoded JSON, raw image bytes."""
    import webdataset as wds

    dataset = wds.WebDataset([str(p) for p in paths], shardshuffle=False, empty_check=False)
    return [
        {"key": s["__key__"], "json": json.loads(s["json"]), "image": s.get("png") or s.get("dcm")}
        for s in dataset
    ]
