"""Where a job lives in storage, for the gateway and for the workers that make its shards.

    <root>/<prefix>/<job id>/job.json             the spec, written when the job is accepted
                            shard-000000.tar ...  the shards, each visible only when complete
                            manifest.json         written last, when every shard is committed
                            cancelled.json        a cancelled job; it wins over a manifest
    <root>/.thorax/jobs/<job id>.json             {"folder": ...}: a job's folder from its id alone
    <root>/.thorax/jobs/<job id>/shard-000000.json  a committed shard's entry, written after the shard

`<root>` is THORAX_STORAGE_PREFIX and `<prefix>` the request's. The index under `.thorax/` lets any
gateway replica find any job by its id with one read, whatever the prefix; the entries let it list a
running job's shards with their checksums without reading the shards.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from service.shards import canonical_json, shard_name
from service.storage import Storage

SPEC, MANIFEST, CANCELLED = "job.json", "manifest.json", "cancelled.json"
INDEX = ".thorax"  # a folder no request prefix may name (service.jobs.clean_prefix refuses it)
JOB_ID = re.compile(r"[0-9a-fA-F]{32}")  # uuid4().hex, the job ids


def index_folder(root: str) -> str:
    """The folder of the job index under the storage prefix `root`."""
    return "/".join(p for p in (root.strip("/"), INDEX, "jobs") if p)


@dataclass(frozen=True)
class JobPaths:
    """The keys of one job. Plain strings, so that a Dask task carries it as an argument."""

    job_id: str
    folder: str  # the job's folder: <root>/<prefix>/<job id>
    meta: str  # its entries' folder in the index: <root>/.thorax/jobs/<job id>
    location: str  # the storage it lives in, for people and for a worker's check: a folder or s3://bucket

    @classmethod
    def of(cls, root: str, prefix: str, job_id: str, location: str) -> JobPaths:
        """A new job's keys: its folder under the storage prefix `root` and the request's `prefix`."""
        return cls.at(root, "/".join(p for p in (root.strip("/"), prefix, job_id) if p), job_id, location)

    @classmethod
    def at(cls, root: str, folder: str, job_id: str, location: str) -> JobPaths:
        """The keys of a job whose folder is known."""
        return cls(job_id, folder, f"{index_folder(root)}/{job_id}", location)

    def key(self, name: str) -> str:
        return f"{self.folder}/{name}"

    @property
    def index_key(self) -> str:
        return f"{self.meta}.json"

    def entry_key(self, shard_index: int) -> str:
        return f"{self.meta}/{shard_name(shard_index).removesuffix('.tar')}.json"

    def record(self, storage: Storage) -> None:
        """Write the index entry that finds this job's folder from its id."""
        storage.put_bytes(self.index_key, canonical_json({"folder": self.folder}))


def find(storage: Storage, root: str, job_id: str) -> JobPaths | None:
    """A job's keys from its id alone (one read of the index), or None when no job has that id."""
    if not JOB_ID.fullmatch(job_id):
        return None
    data = storage.get_bytes(f"{index_folder(root)}/{job_id}.json")
    if data is None:
        return None
    return JobPaths.at(root, json.loads(data)["folder"], job_id, storage.location)


def indexed_ids(storage: Storage, root: str) -> list[str]:
    """The ids of every job in the index."""
    names = (key.rpartition("/")[2] for key in storage.list_folder(index_folder(root) + "/"))
    return [name.removesuffix(".json") for name in names if JOB_ID.fullmatch(name.removesuffix(".json"))]
