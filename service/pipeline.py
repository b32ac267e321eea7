"""The three overlapping stages of a job, joined by bounded queues so that memory stays flat whatever
the count:

    inference thread ──(Batch, ShardEnd)──▶ encoder thread ──(Chunk, ShardEnd)──▶ job thread (upload)

How a stage ended travels as a message, never as a guess: every stage sends one last message downstream,
END when it has sent everything or a Failure carrying its exception, and forwards the upstream's last
message as its own. The job thread reads a shard's chunks until that shard's ShardEnd; a Failure is raised
there, in the job thread, so the job fails with the stage's error. Nothing here looks at timeouts or at
whether a thread is alive, so a slow stage is only slow.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from thoraxclient.schemas import JobSpec

from service import labels as label_rules
from service.backends import BackendError
from service.catalog import LoadedModel
from service.imaging import DicomEncoder, downsample, png_bytes
from service.metrics import Metrics
from service.shards import canonical_json, image_key, tar_end, tar_member

POLL_S = 0.2  # seconds between checks of the stop flags while waiting on a queue
# Threads that encode a batch's images, shared by every job of the process. PNG's zlib runs outside the
# GIL, so they share that work; DICOM is mostly Python, made fast by encoding its shared elements once
# (bench/pipeline_speed.py measures both).
ENCODE_THREADS = os.cpu_count() or 1
_pool: tuple[int, ThreadPoolExecutor] | None = None
_pool_lock = threading.Lock()


class Cancelled(Exception):
    """The job was cancelled by a user."""


class Interrupted(Exception):
    """The gateway is shutting down; the job stays resumable."""


class StageFailed(Exception):
    """A pipeline stage raised an unexpected error; the job fails with its message. Not an OSError, so
    that no storage adapter takes it for a storage fault and retries it."""

    def __init__(self, stage: str, error: BaseException) -> None:
        super().__init__(f"{stage} stage: {type(error).__name__}: {error}")
        self.stage, self.error = stage, error


@dataclass(frozen=True)
class Batch:
    shard_index: int
    indices: list[int]  # image indices in the job
    images: np.ndarray  # [n, H, W] uint8
    labels: np.ndarray  # [n, L] float


@dataclass(frozen=True)
class Chunk:
    shard_index: int
    data: bytes  # tar bytes


@dataclass(frozen=True)
class ShardEnd:
    shard_index: int
    indices: range
    label_counts: dict[str, int] | None = None  # images per label with a value >= 0.5 (set by the encoder)


@dataclass(frozen=True)
class Failure:
    stage: str
    error: BaseException

    def exception(self) -> BaseException:
        """What the job thread raises: a job outcome as it is, anything else as a StageFailed."""
        if isinstance(self.error, Cancelled | Interrupted | BackendError):
            return self.error
        return StageFailed(self.stage, self.error)


class _End:
    def __repr__(self) -> str:
        return "END"


END = _End()  # a stage has sent everything


def spec_sha256(spec: JobSpec) -> str:
    """What the shard bytes depend on: the spec without the job id, destination, creation time and
    owner."""
    return hashlib.sha256(
        canonical_json(spec.model_dump(mode="json", exclude={"job_id", "prefix", "created", "owner"}))
    ).hexdigest()


def shard_indices(spec: JobSpec, shard_index: int) -> range:
    """The job's image indices in one shard."""
    start = shard_index * spec.shard_size
    return range(start, min(start + spec.shard_size, spec.count))


class SampleEncoder:
    """One image of a job -> its two tar members: the image (PNG or DICOM) and its JSON record."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec, self.spec_hash = spec, spec_sha256(spec)
        self.model_ref = f"{spec.model_name}/{spec.model_version}"
        self.model_info = {"name": spec.model_name, "version": spec.model_version,
                           "card_sha256": spec.model_card_sha256}  # fmt: skip
        self.dicom = None
        if spec.format == "dicom":
            self.dicom = DicomEncoder(
                model=self.model_ref, model_sha=spec.model_card_sha256, spec_sha=self.spec_hash
            )

    def __call__(self, index: int, image: np.ndarray, label_row: np.ndarray) -> bytes:
        spec, key = self.spec, image_key(index)
        values = {name: round(float(v), 6) for name, v in zip(spec.label_names, label_row, strict=True)}
        if spec.format == "png":
            image_member = tar_member(f"{key}.png", png_bytes(image))
        else:
            image_member = tar_member(f"{key}.dcm", self.dicom(image, index=index, labels=values))
        record = {
            "key": key, "index": index, "seed": spec.seed, "model": self.model_info, "labels": values,
            "label_vector": list(values.values()),  # in the model's label order
            "resolution": spec.resolution, "format": spec.format, "spec_sha256": self.spec_hash,
        }  # fmt: skip
        return image_member + tar_member(f"{key}.json", canonical_json(record))


class Pipeline:
    """Inference and encoding of a job's pending shards in two threads; the caller, the job thread, reads
    each shard's bytes in order with `shard(i)`. Use as a context manager: leaving it stops the stages.

    `spec` is the job's whole spec (its label rows included); the encoder counts its images in
    `job.images_encoded`; `check()` raises Cancelled or Interrupted when the job should stop."""

    def __init__(
        self, job, spec: JobSpec, model: LoadedModel, pending: list[int], batch_size: int, metrics: Metrics,
        check: Callable[[], None],
    ) -> None:  # fmt: skip
        self.job, self.spec, self.model, self.pending, self.batch_size = job, spec, model, pending, batch_size
        self.metrics, self.check = metrics, check
        self.stop = threading.Event()
        self.batches: queue.Queue = queue.Queue(maxsize=2)
        self.chunks: queue.Queue = queue.Queue(maxsize=8)
        self.threads = [
            threading.Thread(target=self._stage, args=("inference", self._infer, self.batches), daemon=True),
            threading.Thread(target=self._stage, args=("encoder", self._encode, self.chunks), daemon=True),
        ]

    def __enter__(self) -> Pipeline:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)

    # ---- the job thread's side --------------------------------------------------------------------

    def shard(self, shard_index: int) -> ShardReader:
        """The next shard's tar bytes, to iterate once; its ShardEnd is on the reader afterwards."""
        return ShardReader(self, shard_index)

    def _next(self):
        while True:
            self.check()
            try:
                return self.chunks.get(timeout=POLL_S)
            except queue.Empty:
                continue  # only to look at the stop flags again: the stages say when they end

    # ---- the stages -------------------------------------------------------------------------------

    def _stage(self, name: str, body: Callable[[queue.Queue], object], out: queue.Queue) -> None:
        """Run a stage; whatever happens, its last message downstream says how it ended."""
        try:
            last = body(out)
        except BaseException as exc:  # noqa: BLE001 - handed to the job thread, which raises it
            last = Failure(name, exc)
        _put(out, last, self.stop)

    def _infer(self, out: queue.Queue) -> object:
        spec, model = self.spec, self.model
        made_with = (model.backend.name, model.backend.precision)
        if spec.backend is not None and (spec.backend, spec.precision) != made_with:
            raise BackendError(
                f"the job's images are made with {spec.backend} {spec.precision}, this gateway's backend is "
                f"{' '.join(made_with)}: set THORAX_BACKEND and THORAX_PRECISION to the job's to resume it"
            )
        plan = label_rules.LabelPlan.of(spec, model.prior_patterns)
        for shard_index in self.pending:
            indices = shard_indices(spec, shard_index)
            for start in range(indices.start, indices.stop, self.batch_size):
                self.check()
                batch = list(range(start, min(start + self.batch_size, indices.stop)))
                labels = plan(batch)  # [n, L]
                t0 = time.perf_counter()
                images = model.backend.generate(spec.seed, batch, labels)  # [n, H, W] uint8
                self.metrics.inference.labels(model.ref).observe(time.perf_counter() - t0)
                images = downsample(images, spec.resolution)
                _put(out, Batch(shard_index, batch, images, labels), self.stop)
            _put(out, ShardEnd(shard_index, indices), self.stop)
        return END

    def _encode(self, out: queue.Queue) -> object:
        spec, encoder = self.spec, SampleEncoder(self.spec)
        counts: dict[int, np.ndarray] = {}  # shard -> images per label with a value >= 0.5
        while True:
            item = _get(self.batches, self.stop)
            if item is None:  # stopped from outside
                return END
            if item is END or isinstance(item, Failure):
                return item  # the upstream's last message is ours
            if isinstance(item, ShardEnd):
                positives = counts.pop(item.shard_index, np.zeros(len(spec.label_names), np.int64))
                label_counts = dict(zip(spec.label_names, positives.tolist(), strict=True))
                _put(out, Chunk(item.shard_index, tar_end()), self.stop)
                _put(out, ShardEnd(item.shard_index, item.indices, label_counts), self.stop)
                continue
            t0 = time.perf_counter()
            pool = encoding_pool()
            if pool is None or len(item.indices) == 1:
                data = b"".join(map(encoder, item.indices, item.images, item.labels))
            else:  # in order: a shard's bytes do not depend on the threads
                data = b"".join(pool.map(encoder, item.indices, item.images, item.labels))
            counts[item.shard_index] = counts.get(item.shard_index, 0) + (item.labels >= 0.5).sum(axis=0)
            self.job.images_encoded += len(item.indices)
            self.metrics.encoding.labels(spec.format).observe(time.perf_counter() - t0)
            _put(out, Chunk(item.shard_index, data), self.stop)


class ShardReader:
    """One shard's tar bytes from the encoder, in order; `end` is its ShardEnd once they are all read."""

    def __init__(self, pipeline: Pipeline, shard_index: int) -> None:
        self.pipeline, self.shard_index = pipeline, shard_index
        self.end: ShardEnd | None = None

    def __iter__(self) -> Iterator[bytes]:
        while True:
            item = self.pipeline._next()
            if isinstance(item, Failure):
                raise item.exception()
            if item is END:
                problem = f"the stages ended before shard {self.shard_index}"
                raise StageFailed("pipeline", RuntimeError(problem))
            if item.shard_index != self.shard_index:
                problem = f"shard {item.shard_index} arrived while writing shard {self.shard_index}"
                raise StageFailed("pipeline", RuntimeError(problem))
            if isinstance(item, ShardEnd):
                self.end = item
                return
            yield item.data


def encoding_pool() -> ThreadPoolExecutor | None:
    """The process's encoding threads (None for one: encode in the encoder thread itself)."""
    global _pool
    if ENCODE_THREADS <= 1:
        return None
    with _pool_lock:
        if _pool is None or _pool[0] != ENCODE_THREADS:
            _pool = (ENCODE_THREADS, ThreadPoolExecutor(ENCODE_THREADS, thread_name_prefix="thorax-encode"))
        return _pool[1]


def _put(q: queue.Queue, item, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            q.put(item, timeout=POLL_S)
            return
        except queue.Full:
            continue


def _get(q: queue.Queue, stop: threading.Event):
    while not stop.is_set():
        try:
            return q.get(timeout=POLL_S)
        except queue.Empty:
            continue
    return None
