"""One unit of work: shard i of job J, made from (spec, model, i), and the manifest that ends a job.

`make_shard` infers, encodes and uploads one shard and records its entry (name, SHA-256, bytes, images,
label counts). Both executors run exactly this function: the local one in the gateway's threads, the
Dask one as a task on a worker. A shard is a pure function of (model, spec, index), so making it twice,
on two workers or after a crash, writes the same bytes.

A shard counts as committed once its entry is in the index (`service.layout`): the entry is written
after the shard, so an entry never names a shard that was not whole. A shard found without its entry
(its writer died in between) gets one from its bytes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from thoraxclient.schemas import JobSpec, Manifest, ShardEntry

from service import labels as label_rules
from service.catalog import LoadedModel
from service.layout import MANIFEST, JobPaths
from service.metrics import Metrics
from service.pipeline import Pipeline, shard_indices
from service.shards import Digest, shard_name
from service.storage import Storage, StorageError


class Progress:
    """Images through the encoder (the pipeline adds to `images_encoded`); a job record is one too."""

    images_encoded: int = 0


def make_shard(
    storage: Storage, paths: JobPaths, spec: JobSpec, model: LoadedModel, shard_index: int, *,
    batch_size: int, metrics: Metrics, check: Callable[[], None], progress: Progress | None = None,
) -> ShardEntry:  # fmt: skip
    """Make shard `shard_index` of the job, upload it, record its entry, and return the entry. `spec`
    is the whole spec (label rows included); `check()` raises Cancelled or Interrupted to stop."""
    name, digest = shard_name(shard_index), Digest()
    with Pipeline(progress or Progress(), spec, model, [shard_index], batch_size, metrics, check) as pipeline:
        shard = pipeline.shard(shard_index)
        t0 = time.perf_counter()
        storage.put_stream(paths.key(name), (digest.add(chunk) for chunk in shard))
        if shard.end is None:
            raise StorageError(f"{name}: the upload ended before the shard did")
        metrics.upload.observe(time.perf_counter() - t0)
    indices = shard.end.indices
    entry = _record(storage, paths, shard_index, digest, indices, shard.end.label_counts or {})
    metrics.shards.inc()
    metrics.images.labels(f"{spec.model_name}/{spec.model_version}").inc(len(indices))
    return entry


def entry_from_bytes(
    storage: Storage, paths: JobPaths, spec: JobSpec, prior_patterns: list[dict], shard_index: int
) -> ShardEntry:
    """The entry of a shard that is in storage, from its bytes (and the label plan); recorded."""
    name, digest = shard_name(shard_index), Digest()
    for chunk in storage.iter_bytes(paths.key(name)):
        digest.add(chunk)
    indices = shard_indices(spec, shard_index)
    plan = label_rules.LabelPlan.of(spec, prior_patterns)
    counts = label_rules.positive_counts(plan(indices), spec.label_names)
    return _record(storage, paths, shard_index, digest, indices, counts)


def _record(
    storage: Storage, paths: JobPaths, shard_index: int, digest: Digest, indices: range, label_counts: dict
) -> ShardEntry:
    """The shard's entry from its digest, image indices and label counts, written to the job index."""
    entry = ShardEntry(
        name=shard_name(shard_index),
        sha256=digest.sha.hexdigest(),
        bytes=digest.size,
        images=len(indices),
        first_index=indices.start,
        label_counts=label_counts,
    )
    storage.put_bytes(paths.entry_key(shard_index), entry.model_dump_json().encode())
    return entry


def recorded_entries(
    storage: Storage, paths: JobPaths, known: dict[int, ShardEntry]
) -> dict[int, ShardEntry]:
    """The entries in the index that `known` lacks (entries never change, so known ones are not read)."""
    found = {}
    for key in storage.list_folder(paths.meta + "/"):
        stem = key.rpartition("/")[2].removesuffix(".json")
        if not stem.startswith("shard-") or not stem.removeprefix("shard-").isdigit():
            continue
        index = int(stem.removeprefix("shard-"))
        if index in known:
            continue
        data = storage.get_bytes(key)
        if data is not None:
            found[index] = ShardEntry.model_validate_json(data)
    return found


def find_committed(
    storage: Storage, paths: JobPaths, spec: JobSpec, prior_patterns: list[dict], known: dict[int, ShardEntry]
) -> dict[int, ShardEntry]:
    """Shards already in storage (from this run, another worker or an earlier gateway) that `known`
    lacks, with their entries: recorded ones as recorded, others from their bytes."""
    # The job's own objects only: a folder below it (another job's, from before nesting was refused)
    # holds shards of the same names that are not this job's.
    names = {key.rpartition("/")[2] for key in storage.list_folder(paths.folder + "/")}
    recorded = recorded_entries(storage, paths, known)
    found = {}
    for index in range(spec.shards_total):
        if index in known or shard_name(index) not in names:
            continue
        found[index] = recorded.get(index) or entry_from_bytes(storage, paths, spec, prior_patterns, index)
    return found


def manifest_bytes(spec: JobSpec, shards: list[ShardEntry]) -> bytes:
    """manifest.json: every shard with its checksum and label counts, the whole spec and the model card's
    hash; never a URL, so that it is a pure function of the job."""
    totals = {name: sum(s.label_counts.get(name, 0) for s in shards) for name in spec.label_names}
    manifest = Manifest(
        job_id=spec.job_id,
        model={"name": spec.model_name, "version": spec.model_version, "card_sha256": spec.model_card_sha256},
        spec=spec,
        images=sum(s.images for s in shards),
        shards=shards,
        label_counts=totals,
    )
    stored = manifest.model_dump(mode="json", exclude={"shards": {"__all__": {"url"}}})
    return json.dumps(stored, indent=1, sort_keys=True).encode()


def write_manifest(
    storage: Storage, paths: JobPaths, spec: JobSpec, entries: dict[int, ShardEntry],
    remake: Callable[[int], ShardEntry], cancelled: Callable[[], bool],
) -> bool:  # fmt: skip
    """Write the manifest once every shard is in storage as its entry says (a shard that is not is made
    again with `remake`). False, and no manifest, when the job is cancelled: a cancel that lands while the
    manifest is written removes it again, so that no manifest outlives a cancel."""
    for index in range(spec.shards_total):  # the manifest claims no shard that is not there
        entry = entries.get(index)
        if entry is None or storage.size(paths.key(entry.name)) != entry.bytes:
            entries[index] = remake(index)
    data = manifest_bytes(spec, [entries[i] for i in range(spec.shards_total)])
    if cancelled():
        return False
    storage.put_bytes(paths.key(MANIFEST), data)
    if cancelled():
        storage.delete(paths.key(MANIFEST))
        return False
    return True
