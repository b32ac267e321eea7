"""Jobs: a request for N radiographs, turned into WebDataset shards in storage, surviving restarts.

A job's spec is written first (`job.json`), then its shards in order (`shard-000000.tar`, ...), each
visible only when complete, then `manifest.json`. A shard is a pure function of (model, spec, shard
index), so a gateway that starts and finds a job without a manifest resumes it at its first missing
shard, and writing a shard twice is harmless.

Inside a job three stages overlap (inference, encoding, upload): see `service.pipeline`.
"""

from __future__ import annotations

import itertools
import json
import logging
import queue
import random
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from thoraxclient.schemas import TERMINAL_STATES, JobRequest, JobSpec, JobStatus, Manifest, ShardEntry

from service import labels as label_rules
from service.access import LOCAL, Caller
from service.backends import BackendError
from service.catalog import Catalog, LoadedModel
from service.metrics import Metrics
from service.pipeline import POLL_S, Cancelled, Interrupted, Pipeline, ShardReader, StageFailed, shard_indices
from service.problems import ApiProblem, FieldProblem, LimitProblem
from service.settings import Settings
from service.shards import Digest, canonical_json, shard_name
from service.storage import Storage, StorageError
from thorax.store import StoreError

log = logging.getLogger("thorax.gateway")
SPEC, MANIFEST, CANCELLED = "job.json", "manifest.json", "cancelled.json"
_JOB_ID = re.compile(r"[0-9a-fA-F]{32}")  # uuid4().hex, the job ids
_PREFIX_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._=-")
MAX_PREFIX_SEGMENT = 100  # characters per folder name in `prefix` (file systems allow 255 bytes)
STARTUP_SCAN_WAIT_S = 10.0  # how long a request for an unknown job waits for the start-up scan of storage
SHARD_URL_SECONDS = 6 * 3600  # presigned shard URLs stay valid this long


def clean_prefix(prefix: str) -> str:
    """A destination folder that stays under the gateway's storage prefix, or a FieldProblem."""
    prefix = prefix.rstrip("/")  # no strip(): the schema says what is taken, spaces are not
    if not prefix:
        return ""
    if prefix.startswith("/") or "\\" in prefix:
        raise FieldProblem("prefix", "must be a relative path inside the storage prefix")
    for part in prefix.split("/"):
        if part in ("", ".", "..") or not set(part) <= _PREFIX_CHARS:
            raise FieldProblem("prefix", f"segment {part!r} not allowed: use letters, digits and . _ = -")
        if _JOB_ID.fullmatch(part):  # every job's folder ends in its id: no job's folder inside another's
            raise FieldProblem("prefix", f"segment {part!r} looks like a job id, which names a job's folder")
        if len(part) > MAX_PREFIX_SEGMENT:  # a folder name every file system and S3 server takes
            raise FieldProblem("prefix", f"a segment is {len(part)} characters; at most {MAX_PREFIX_SEGMENT}")
    return prefix


@dataclass
class Job:
    """A job as the gateway keeps it in memory: its spec without per-image label rows (those stay in
    `job.json` and are read only while the job runs), its state and its committed shards."""

    spec: JobSpec  # label_rows left out; `has_rows` says whether job.json has them
    base: str  # storage key prefix of the job's folder
    has_rows: bool = False
    state: str = "queued"
    error: str | None = None
    committed: dict[int, ShardEntry] = field(default_factory=dict)
    cancel: threading.Event = field(default_factory=threading.Event)
    run_started: float | None = None
    images_at_start: int = 0
    images_encoded: int = 0  # this run's images through the encoder: the rate, before shards commit

    @property
    def id(self) -> str:
        return self.spec.job_id

    @property
    def images_done(self) -> int:
        """Images in committed shards: in storage, readable."""
        return sum(entry.images for entry in list(self.committed.values()))  # list(): the job thread adds

    @property
    def images_made(self) -> int:
        """Images through the encoder: those in committed shards and, while the job runs, those in the
        shards still being written (a shard of 1000 images commits only when it is whole)."""
        if self.state != "running":
            return self.images_done  # a stopped job's unfinished shard is lost and made again
        return max(self.images_done, self.images_at_start + self.images_encoded)

    def key(self, name: str) -> str:
        return f"{self.base}/{name}"

    def status(self, url: str, location: str) -> JobStatus:
        done = self.images_done
        rate = left = None
        if self.state == "running" and self.run_started is not None:
            elapsed = time.monotonic() - self.run_started
            if elapsed > 0 and self.images_encoded > 0:
                rate = self.images_encoded / elapsed
                left = max(0.0, self.spec.count - self.images_at_start - self.images_encoded) / rate
        return JobStatus(
            id=self.id,
            url=url,
            state=self.state,
            model=f"{self.spec.model_name}/{self.spec.model_version}",
            count=self.spec.count,
            images_made=self.images_made,
            images_done=done,
            shards_done=len(self.committed),
            shards_total=self.spec.shards_total,
            images_per_second=rate,
            seconds_left=left,
            seed=self.spec.seed,
            format=self.spec.format,
            location=f"{location}/{self.base}/",
            manifest_url=f"{url}/manifest" if self.state == "succeeded" else None,
            error=self.error,
            created=self.spec.created,
        )


class JobManager:
    def __init__(self, settings: Settings, storage: Storage, catalog: Catalog, metrics: Metrics) -> None:
        self.settings, self.storage, self.catalog, self.metrics = settings, storage, catalog, metrics
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()
        self.queue: queue.Queue[Job] = queue.Queue()
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.scanned = threading.Event()  # the start-up scan has read every job in storage
        self.scan_tried = threading.Event()  # it has tried at least once
        self.scan_failure: str | None = None  # why its last try failed

    # ---- life cycle -------------------------------------------------------------------------------

    def start(self) -> None:
        for n in range(self.settings.job_workers):
            thread = threading.Thread(target=self._worker, name=f"thorax-job-{n}", daemon=True)
            thread.start()
            self.threads.append(thread)
        scan = threading.Thread(target=self._scan_storage, name="thorax-resume", daemon=True)
        scan.start()
        self.threads.append(scan)

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _scan_storage(self) -> None:
        """Find the jobs in storage: finished ones are listed, unfinished ones resume (with backoff while
        storage is away)."""
        delay = 0.5
        while not self.stopping.is_set():
            try:
                self.storage.prepare()
                self._load_jobs()
                self.scan_failure = None
                self.scanned.set()
                return
            except Exception as exc:  # storage away, or a bug: retried, and never the end of the scan
                if isinstance(exc, StorageError):
                    log.warning("storage not reachable for the job scan (%s); retrying in %.1fs", exc, delay)
                    self.scan_failure = str(exc)
                else:
                    log.exception("the job scan failed; retrying in %.1fs", delay)
                    self.scan_failure = f"{type(exc).__name__}: {exc}"
                self.metrics.errors.labels("storage").inc()
                self.scan_tried.set()  # before the back-off: requests need not wait it out
                self.stopping.wait(delay)
                delay = min(delay * 2, 10.0)
            finally:
                self.scan_tried.set()

    def _wait_for_scan(self) -> None:
        """Return once the jobs of earlier gateways are read from storage, or answer 503: at once when
        the scan has already found storage unreachable, else after STARTUP_SCAN_WAIT_S."""
        self.scan_tried.wait(STARTUP_SCAN_WAIT_S)
        if self.scanned.is_set():
            return
        failure = self.scan_failure
        if failure is not None:
            raise ApiProblem(503, "Storage unavailable", f"the jobs in storage cannot be read: {failure}")
        raise ApiProblem(503, "Service Unavailable", "the gateway is still reading its jobs from storage")

    def _load_jobs(self) -> None:
        root = self.settings.storage_prefix.strip("/")
        keys = self.storage.list(f"{root}/" if root else "")  # "jobs/", not every key starting "jobs"
        folders: dict[str, set[str]] = {}
        for key in keys:
            folder, _, name = key.rpartition("/")
            folders.setdefault(folder, set()).add(name)
        for folder, names in sorted(folders.items()):
            if SPEC not in names:
                continue
            try:
                spec = JobSpec.model_validate_json(self.storage.get_bytes(f"{folder}/{SPEC}") or b"")
            except ValueError as exc:
                log.warning("skipping %s: unreadable %s (%s)", folder, SPEC, exc)
                continue
            with self.lock:
                if spec.job_id in self.jobs:
                    continue
            # The job is published only once its state is known: a lookup during the scan must never
            # see a finished or broken job as "queued".
            job = _job_of(spec, folder)
            resume = False
            if MANIFEST in names:
                try:
                    data = self.storage.get_bytes(f"{folder}/{MANIFEST}") or b""
                    manifest = Manifest.model_validate_json(data)
                except ValueError as exc:  # one broken job must not stop the scan of the others
                    log.warning("job %s: unreadable %s (%s)", job.id, MANIFEST, exc)
                    job.state = "failed"
                    job.error = (
                        f"its {MANIFEST} in storage is unreadable ({type(exc).__name__}); POST "
                        f"{job.id}/resume checks its shards and writes the manifest again"
                    )
                else:
                    job.committed = {i: s for i, s in enumerate(manifest.shards)}
                    job.state = "succeeded"
            elif CANCELLED in names:
                job.state = "cancelled"
            elif self.settings.resume_on_start:
                resume = True
            else:  # unfinished, and nobody runs it: not active, so that it blocks no new job
                job.state = "failed"
                job.error = (
                    f"unfinished: the run that made it stopped after {len(names & _shard_names(spec))} of "
                    f"{spec.shards_total} shards; POST {job.id}/resume (or `thorax generate --resume`) "
                    "finishes it"
                )
            with self.lock:
                if spec.job_id in self.jobs:  # submitted or resumed meanwhile
                    continue
                self.jobs[spec.job_id] = job
            if resume:
                log.info("resuming job %s", job.id)
                self.queue.put(job)

    # ---- requests ---------------------------------------------------------------------------------

    def plan(self, request: JobRequest, caller: Caller = LOCAL) -> JobSpec:
        """The spec a request would make, or the FieldProblem, LimitProblem or 413 that a submission of it
        gets; starts and stores nothing (`POST /v1/jobs?dry_run=true`, and `submit`)."""
        s = self.settings
        if request.count > s.max_count:
            raise LimitProblem(
                f"count: at most {s.max_count} images per job, asked for {request.count}", "count"
            )
        if request.shard_size > s.max_shard_size:
            raise FieldProblem("shard_size", f"at most {s.max_shard_size} images per shard")
        prefix = clean_prefix(request.prefix)
        model = self.model(request.model)
        resolution = resolve_resolution(request.resolution, model)
        resolved_labels = label_rules.resolve(request.labels, model.label_names, request.count)
        seed = request.seed if request.seed is not None else random.SystemRandom().randrange(2**63)
        spec = JobSpec(
            job_id=uuid.uuid4().hex,
            model_name=model.stored.name,
            model_version=model.stored.version,
            model_card_sha256=model.card_sha256,
            resolution=resolution,
            native_resolution=model.resolution,
            count=request.count,
            seed=seed,
            format=request.format,
            shard_size=request.shard_size,
            prefix=prefix,
            label_names=model.label_names,
            created=datetime.now(UTC),
            owner=caller.key_id,
            backend=model.backend.name,
            precision=model.backend.precision,
            **resolved_labels,
        )
        recorded = _spec_json(spec)
        if spec.label_rows is not None and len(recorded) > s.max_request_bytes:
            # Bounded as stored, not as sent: rows of "0," grow to "0.0," in the spec.
            detail = (
                f"labels: {len(spec.label_rows)} label rows make a {len(recorded)}-byte job spec; at most "
                f"{s.max_request_bytes} bytes (THORAX_MAX_REQUEST_BYTES)"
            )
            errors = [{"field": "labels", "message": detail}]
            raise ApiProblem(413, "Request too large", detail, "request-too-large", errors)
        return spec

    def submit(self, request: JobRequest, caller: Caller = LOCAL) -> Job:
        s = self.settings
        spec = self.plan(request, caller)
        recorded = _spec_json(spec)
        base = "/".join(p for p in (s.storage_prefix.strip("/"), spec.prefix, spec.job_id) if p)
        job = _job_of(spec, base)
        with self.lock:
            for other in self.jobs.values():  # the id rule above makes this impossible; keep it so
                if base.startswith(other.base + "/"):
                    raise FieldProblem("prefix", f"lies inside the folder of job {other.id}")
            active = sum(1 for j in self.jobs.values() if j.state in ("queued", "running"))
            if active >= s.max_active_jobs:
                raise LimitProblem(f"{active} jobs are queued or running; the limit is {s.max_active_jobs}")
            self.jobs[spec.job_id] = job
        try:  # a job that could not be recorded leaves no trace: not listed, not counted as active
            self.storage.put_bytes(job.key(SPEC), recorded)
        except BaseException as exc:
            with self.lock:
                del self.jobs[spec.job_id]
            if not isinstance(exc, StorageError):
                raise
            self.metrics.errors.labels("storage").inc()
            raise ApiProblem(503, "Storage unavailable", f"could not record the job: {exc}") from exc
        self.queue.put(job)
        return job

    def model(self, ref: str | None) -> LoadedModel:
        try:
            return self.catalog.get(ref)
        except StoreError as exc:
            raise FieldProblem("model", str(exc)) from None

    def get(self, job_id: str, caller: Caller = LOCAL) -> Job:
        """The job, if `caller` may see it: its own, or any for an admin; else the same 404 as for none."""
        with self.lock:
            job = self.jobs.get(job_id)
        if job is None and not self.scanned.is_set():
            # Just after a start the jobs of earlier gateways are still being read from storage: answer
            # once they are, not with a 404 for a job that exists.
            self._wait_for_scan()
            with self.lock:
                job = self.jobs.get(job_id)
        if job is None or not caller.may_see(job.spec.owner):
            raise ApiProblem(404, "Not found", f"no job {job_id!r}")
        return job

    def list(self, caller: Caller = LOCAL) -> list[Job]:
        self._wait_for_scan()  # a list without the earlier gateways' jobs would mislead
        with self.lock:
            jobs = [job for job in self.jobs.values() if caller.may_see(job.spec.owner)]
        return sorted(jobs, key=lambda j: j.spec.created, reverse=True)

    def cancel(self, job_id: str, caller: Caller = LOCAL) -> Job:
        job = self.get(job_id, caller)
        if job.state in TERMINAL_STATES and job.state != "failed":
            raise ApiProblem(409, "Conflict", f"job {job_id} has already {job.state}")
        job.cancel.set()
        try:
            self.storage.put_bytes(
                job.key(CANCELLED), canonical_json({"cancelled": datetime.now(UTC).isoformat()})
            )
        except StorageError as exc:
            log.warning("job %s: could not record the cancellation (%s)", job_id, exc)
        if job.state in ("queued", "failed"):
            job.state = "cancelled"
        return job

    def resume(self, job_id: str, caller: Caller = LOCAL) -> Job:
        job = self.get(job_id, caller)
        if job.state != "failed":
            raise ApiProblem(
                409, "Conflict", f"only a failed job can be resumed; job {job_id} is {job.state}"
            )
        job.state, job.error = "queued", None
        self.queue.put(job)
        return job

    def counts(self) -> dict[str, int]:
        with self.lock:
            states = [j.state for j in self.jobs.values()]
        return {state: states.count(state) for state in ("queued", "running", *TERMINAL_STATES)}

    def manifest(self, job_id: str, caller: Caller = LOCAL) -> bytes:
        job = self.get(job_id, caller)
        if job.state != "succeeded":
            raise ApiProblem(
                409, "Conflict", f"job {job_id} is {job.state}; the manifest comes when it succeeds"
            )
        data = self.storage.get_bytes(job.key(MANIFEST))
        if data is None:
            raise ApiProblem(404, "Not found", f"job {job_id} has no manifest in storage")
        return data

    def shards(self, job_id: str, caller: Caller = LOCAL) -> list[ShardEntry]:
        """The job's committed shards so far, in order (readable while it runs)."""
        job = self.get(job_id, caller)
        committed = dict(job.committed)  # the job thread adds to it
        return [committed[i] for i in sorted(committed)]

    def shard_stream(
        self, job_id: str, shard_index: int, caller: Caller = LOCAL
    ) -> tuple[ShardEntry, Iterator[bytes]]:
        """A committed shard's entry and its bytes, streamed from storage."""
        job = self.get(job_id, caller)
        entry = job.committed.get(shard_index)
        if entry is None:
            raise ApiProblem(404, "Not found", f"job {job_id} has no committed shard {shard_index}")
        # Everything that can fail, before any header is sent: once the answer has started, a missing
        # object could only show as a short body under a 200.
        key = job.key(entry.name)
        try:
            found = self.storage.size(key)
            if found is None:
                raise ApiProblem(404, "Not found", f"shard {entry.name} of job {job_id} is gone from storage")
            if found != entry.bytes:
                raise ApiProblem(
                    409, "Conflict", f"shard {entry.name} of job {job_id} is {found} bytes, not {entry.bytes}"
                )
            chunks = self.storage.iter_bytes(key)
            first = next(chunks, b"")
        except (StorageError, OSError) as exc:
            self.metrics.errors.labels("storage").inc()
            raise ApiProblem(503, "Storage unavailable", f"could not read {entry.name}: {exc}") from exc
        return entry, itertools.chain([first], chunks)

    def shard_url(self, job_id: str, entry: ShardEntry, caller: Caller = LOCAL) -> str | None:
        """A presigned URL of a shard where storage has them, else None."""
        job = self.get(job_id, caller)
        try:
            return self.storage.presigned_url(job.key(entry.name), SHARD_URL_SECONDS)
        except StorageError as exc:
            self.metrics.errors.labels("storage").inc()
            raise ApiProblem(503, "Storage unavailable", f"could not sign a shard URL: {exc}") from exc

    # ---- running ----------------------------------------------------------------------------------

    def _worker(self) -> None:
        while not self.stopping.is_set():
            try:
                job = self.queue.get(timeout=POLL_S)
            except queue.Empty:
                continue
            if job.cancel.is_set() or job.state == "cancelled":
                job.state = "cancelled"
                continue
            try:
                self._run(job)
            except Exception:  # never let a worker die
                log.exception("job %s crashed", job.id)
                job.state, job.error = "failed", "internal error (logged); resuming the job retries it"

    def _run(self, job: Job) -> None:
        job.state, job.error = "running", None
        try:
            model = self.catalog.get(f"{job.spec.model_name}/{job.spec.model_version}")
        except (StoreError, BackendError) as exc:
            job.state, job.error = "failed", f"model {job.spec.model_name}/{job.spec.model_version}: {exc}"
            return
        if model.card_sha256 != job.spec.model_card_sha256:
            job.state, job.error = "failed", "the model's card changed since the job was submitted"
            return
        failing_since, delay, done_at_failure = None, 0.5, -1
        while True:
            job.run_started, job.images_at_start, job.images_encoded = time.monotonic(), job.images_done, 0
            try:
                spec = self._whole_spec(job)  # its label rows, for this run only
                self._find_committed(job, spec)
                job.images_at_start = job.images_done  # the shards found in storage; the rest is made now
                self._produce(job, spec, model)
                self._write_manifest(job, spec)
                job.state = "succeeded"
                log.info("job %s succeeded: %d images", job.id, job.images_done)
                return
            except Cancelled:
                job.state = "cancelled"
                return
            except Interrupted:
                return
            except StorageError as exc:
                self.metrics.errors.labels("storage").inc()
                if failing_since is None or len(job.committed) > done_at_failure:
                    failing_since, delay, done_at_failure = time.monotonic(), 0.5, len(job.committed)
                waited = time.monotonic() - failing_since
                if waited >= self.settings.storage_retry_seconds:
                    job.state = "failed"
                    job.error = (
                        f"storage unavailable for {waited:.0f}s: {exc}; the job keeps its "
                        f"{len(job.committed)} committed shards and resumes with POST {job.id}/resume "
                        "or a gateway restart"
                    )
                    return
                log.warning("job %s: storage error (%s); retrying in %.1fs", job.id, exc, delay)
                if job.cancel.wait(delay) or self.stopping.is_set():
                    continue  # the next attempt notices and stops
                delay = min(delay * 2, 10.0)
            except BackendError as exc:
                self.metrics.errors.labels("backend").inc()
                job.state, job.error = "failed", f"backend: {exc}"
                return
            except StageFailed as exc:
                log.error("job %s failed", job.id, exc_info=exc.error)
                job.state, job.error = "failed", str(exc)
                return

    def _check(self, job: Job) -> None:
        if job.cancel.is_set():
            raise Cancelled()
        if self.stopping.is_set():
            raise Interrupted()

    def _whole_spec(self, job: Job) -> JobSpec:
        """The job's spec with its label rows, read from its job.json when it has any."""
        if not job.has_rows:
            return job.spec
        data = self.storage.get_bytes(job.key(SPEC))
        if data is None:
            raise StorageError(f"{job.key(SPEC)} is missing")
        return JobSpec.model_validate_json(data)

    def _find_committed(self, job: Job, spec: JobSpec) -> None:
        """Shards already in storage (from this run or an earlier gateway) count as committed."""
        self._check(job)
        # The job's own objects only: a folder below it (another job's, from before nesting was refused)
        # holds shards of the same names that are not this job's.
        names = {key.rpartition("/")[2] for key in self.storage.list_folder(job.base + "/")}
        plan = None
        for index in range(job.spec.shards_total):
            name = shard_name(index)
            if name in names and index not in job.committed:
                plan = plan or label_rules.LabelPlan.of(spec, self.model_of(job).prior_patterns)
                digest = Digest()
                for chunk in self.storage.iter_bytes(job.key(name)):
                    digest.add(chunk)
                indices = shard_indices(job.spec, index)
                counts = label_rules.positive_counts(plan(indices), job.spec.label_names)
                job.committed[index] = ShardEntry(
                    name=name,
                    sha256=digest.sha.hexdigest(),
                    bytes=digest.size,
                    images=len(indices),
                    first_index=indices.start,
                    label_counts=counts,
                )

    def model_of(self, job: Job) -> LoadedModel:
        return self.catalog.get(f"{job.spec.model_name}/{job.spec.model_version}")

    def _produce(self, job: Job, spec: JobSpec, model: LoadedModel) -> None:
        pending = [i for i in range(job.spec.shards_total) if i not in job.committed]
        if not pending:
            return
        check = lambda: self._check(job)  # noqa: E731
        with Pipeline(job, spec, model, pending, self.settings.batch_size, self.metrics, check) as pipeline:
            for index in pending:
                self._upload(job, pipeline.shard(index))

    def _upload(self, job: Job, shard: ShardReader) -> None:
        """Stream one shard from the pipeline into storage, then count it as committed."""
        digest, name = Digest(), shard_name(shard.shard_index)
        t0 = time.perf_counter()
        self.storage.put_stream(job.key(name), (digest.add(chunk) for chunk in shard))
        if shard.end is None:
            raise StorageError(f"{name}: the upload ended before the shard did")
        self.metrics.upload.observe(time.perf_counter() - t0)
        indices = shard.end.indices
        job.committed[shard.shard_index] = ShardEntry(
            name=name,
            sha256=digest.sha.hexdigest(),
            bytes=digest.size,
            images=len(indices),
            first_index=indices.start,
            label_counts=shard.end.label_counts or {},
        )
        self.metrics.shards.inc()
        self.metrics.images.labels(f"{job.spec.model_name}/{job.spec.model_version}").inc(len(indices))

    def _write_manifest(self, job: Job, spec: JobSpec) -> None:
        self._check(job)
        shards = [job.committed[i] for i in range(job.spec.shards_total)]
        for index, entry in enumerate(shards):  # the manifest claims no shard that is not there
            found = self.storage.size(job.key(entry.name))
            if found != entry.bytes:
                del job.committed[index]  # the retry makes it again
                what = "missing" if found is None else f"{found} bytes, not {entry.bytes}"
                raise StorageError(f"{entry.name} is {what} in storage; writing it again")
        totals = {name: sum(s.label_counts.get(name, 0) for s in shards) for name in job.spec.label_names}
        manifest = Manifest(
            job_id=job.id,
            model={
                "name": job.spec.model_name,
                "version": job.spec.model_version,
                "card_sha256": job.spec.model_card_sha256,
            },
            spec=spec,
            images=sum(s.images for s in shards),
            shards=shards,
            label_counts=totals,
        )
        stored = manifest.model_dump(mode="json", exclude={"shards": {"__all__": {"url"}}})
        data = json.dumps(stored, indent=1, sort_keys=True).encode()
        self.storage.put_bytes(job.key(MANIFEST), data)


def _job_of(spec: JobSpec, base: str) -> Job:
    """The in-memory record of a job: its spec without the label rows."""
    if spec.label_rows is None:
        return Job(spec, base)
    return Job(spec.model_copy(update={"label_rows": None}), base, has_rows=True)


def _spec_json(spec: JobSpec) -> bytes:
    """job.json: indented for people, unless it holds label rows (one number a line would be 4x larger)."""
    if spec.label_rows is None:
        return spec.model_dump_json(indent=1).encode()
    return spec.model_dump_json().encode()


def _shard_names(spec: JobSpec) -> set[str]:
    return {shard_name(i) for i in range(spec.shards_total)}


def resolve_resolution(asked: int | None, model: LoadedModel) -> int:
    if asked is None:
        return model.resolution
    if asked > model.resolution:
        raise FieldProblem("resolution", f"at most the model's {model.resolution} px (lower is downsampled)")
    return asked
