"""Job bookkeeping: a request for N radiographs becomes a job recorded in storage, which any gateway
replica can then look up by its id, follow, list, cancel and resume.

Storage is the record (`service.layout`): a job's spec is written first (`job.json`), then its shards,
each visible only when complete and committed by its entry in the index, then `manifest.json`. The
shards are made by an executor (`service.executors`): this process's threads by default, or a Dask
cluster. One shard is one unit of work (`service.work.make_shard`), a pure function of (model, spec,
shard index), so a job resumes anywhere and writing a shard twice is harmless.
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from thoraxclient.schemas import TERMINAL_STATES, JobRequest, JobSpec, JobStatus, Manifest, ShardEntry

from service import labels as label_rules
from service.access import LOCAL, Caller
from service.catalog import Catalog, LoadedModel
from service.executors import SchedulerUnavailable, open_executor
from service.layout import CANCELLED, INDEX, JOB_ID, MANIFEST, SPEC, JobPaths, find, indexed_ids
from service.metrics import Metrics
from service.problems import ApiProblem, FieldProblem, LimitProblem
from service.settings import Settings
from service.shards import canonical_json, shard_name
from service.storage import Storage, StorageError
from thorax.store import StoreError

log = logging.getLogger("thorax.gateway")
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
    if prefix.split("/")[0] == INDEX:
        raise FieldProblem("prefix", f"{INDEX!r} holds the gateway's job index; choose another folder")
    for part in prefix.split("/"):
        if part in ("", ".", "..") or not set(part) <= _PREFIX_CHARS:
            raise FieldProblem("prefix", f"segment {part!r} not allowed: use letters, digits and . _ = -")
        if JOB_ID.fullmatch(part):  # every job's folder ends in its id: no job's folder inside another's
            raise FieldProblem("prefix", f"segment {part!r} looks like a job id, which names a job's folder")
        if len(part) > MAX_PREFIX_SEGMENT:  # a folder name every file system and S3 server takes
            raise FieldProblem("prefix", f"a segment is {len(part)} characters; at most {MAX_PREFIX_SEGMENT}")
    return prefix


@dataclass
class Job:
    """A job as the gateway keeps it in memory: its spec without per-image label rows (those stay in
    `job.json` and are read only while the job runs), its state and its committed shards."""

    spec: JobSpec  # label_rows left out; `has_rows` says whether job.json has them
    paths: JobPaths  # where it lives in storage
    has_rows: bool = False
    state: str = "queued"
    error: str | None = None
    committed: dict[int, ShardEntry] = field(default_factory=dict)
    cancel: threading.Event = field(default_factory=threading.Event)
    run_started: float | None = None
    images_at_start: int = 0
    images_encoded: int = 0  # this run's images through the encoder: the rate, before shards commit
    refreshed: float = 0.0  # when its state was last read from storage and the scheduler (Dask)

    @property
    def id(self) -> str:
        return self.spec.job_id

    @property
    def base(self) -> str:
        """The job's folder: the storage key prefix of its objects."""
        return self.paths.folder

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
        return self.paths.key(name)

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
    def __init__(
        self, settings: Settings, storage: Storage, catalog: Catalog, metrics: Metrics, executor=None
    ) -> None:
        self.settings, self.storage, self.catalog, self.metrics = settings, storage, catalog, metrics
        self.root = settings.storage_prefix.strip("/")
        self.executor = executor or open_executor(settings, storage, catalog, metrics)
        self.jobs: dict[str, Job] = {}  # a cache of records where the executor is shared (Dask)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.scanned = threading.Event()  # the start-up scan has read every job in storage
        self.scan_tried = threading.Event()  # it has tried at least once
        self.scan_failure: str | None = None  # why its last try failed

    @property
    def shared(self) -> bool:
        """Whether other gateway replicas run jobs on the same storage (the Dask executor): then every
        answer about a job comes from storage and the scheduler, not from this process's memory."""
        return self.executor.shared

    # ---- life cycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self.executor.start()
        scan = threading.Thread(target=self._scan_storage, name="thorax-resume", daemon=True)
        scan.start()
        self.threads.append(scan)

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.executor.stop(max(0.0, deadline - time.monotonic()))

    def _scan_storage(self) -> None:
        """Find the jobs in storage: finished ones are listed, unfinished ones resume (with backoff while
        storage, or the scheduler, is away)."""
        delay, unsubmitted = 0.5, []
        while not self.stopping.is_set():
            try:
                if not self.scanned.is_set():
                    self.storage.prepare()
                    unsubmitted = self._load_jobs()
                    self.scan_failure = None
                    self.scanned.set()
                while unsubmitted:  # at most once per job: the scheduler dedupes what replicas resubmit
                    self.executor.adopt(unsubmitted[0])
                    unsubmitted.pop(0)
                return
            except SchedulerUnavailable as exc:
                log.warning("%s; resuming %d jobs in %.1fs", exc, len(unsubmitted), delay)
            except Exception as exc:  # storage away, or a bug: retried, and never the end of the scan
                if isinstance(exc, StorageError):
                    log.warning("storage not reachable for the job scan (%s); retrying in %.1fs", exc, delay)
                    self.scan_failure = str(exc)
                else:
                    log.exception("the job scan failed; retrying in %.1fs", delay)
                    self.scan_failure = f"{type(exc).__name__}: {exc}"
                self.metrics.errors.labels("storage").inc()
            finally:
                self.scan_tried.set()  # before the back-off: requests need not wait it out
            self.stopping.wait(delay)
            delay = min(delay * 2, 10.0)

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

    def _load_jobs(self) -> list[Job]:
        """Read every job in storage; returns the unfinished ones to resume."""
        keys = self.storage.list(f"{self.root}/" if self.root else "")  # "jobs/", not every "jobs*" key
        indexed = set(keys)
        folders: dict[str, set[str]] = {}
        for key in keys:
            folder, _, name = key.rpartition("/")
            folders.setdefault(folder, set()).add(name)
        resume = []
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
            paths = JobPaths.at(self.root, folder, spec.job_id, self.storage.location)
            if paths.index_key not in indexed:  # a job from before the index: found by id from now on
                paths.record(self.storage)
            # The job is published only once its state is known: a lookup during the scan must never
            # see a finished or broken job as "queued".
            job = _job_of(spec, paths)
            if CANCELLED in names:  # a cancel wins over a manifest written in the same moment
                job.state = "cancelled"
            elif MANIFEST in names:
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
            elif self.settings.resume_on_start:
                resume.append(job)
            else:  # unfinished, and nobody runs it: not active, so that it blocks no new job
                job.state = "failed"
                job.error = (
                    f"unfinished: the run that made it stopped after {len(names & _shard_names(spec))} of "
                    f"{spec.shards_total} shards; POST {job.id}/resume (or `thorax generate --resume`) "
                    "finishes it"
                )
            with self.lock:
                if spec.job_id in self.jobs:  # submitted or resumed meanwhile
                    resume = [j for j in resume if j is not job]
                    continue
                self.jobs[spec.job_id] = job
            if job in resume:
                log.info("resuming job %s", job.id)
        return resume

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
        job = _job_of(spec, JobPaths.of(self.root, spec.prefix, spec.job_id, self.storage.location))
        if self.shared:  # other replicas' jobs count too, as storage and the scheduler know them
            self._refresh([j for j in self._cached() if j.state in ("queued", "running")])
        with self.lock:
            for other in self.jobs.values():  # the id rule above makes this impossible; keep it so
                if job.base.startswith(other.base + "/"):
                    raise FieldProblem("prefix", f"lies inside the folder of job {other.id}")
            active = sum(1 for j in self.jobs.values() if j.state in ("queued", "running"))
            if active >= s.max_active_jobs:
                raise LimitProblem(f"{active} jobs are queued or running; the limit is {s.max_active_jobs}")
            self.jobs[spec.job_id] = job
        try:  # a job that could not be recorded leaves no trace: not listed, not counted as active
            job.paths.record(self.storage)  # first: an index entry without its job.json finds no job
            self.storage.put_bytes(job.key(SPEC), recorded)
        except BaseException as exc:
            with self.lock:
                del self.jobs[spec.job_id]
            if not isinstance(exc, StorageError):
                raise
            self.metrics.errors.labels("storage").inc()
            raise ApiProblem(503, "Storage unavailable", f"could not record the job: {exc}") from exc
        try:
            self.executor.run(job)
        except SchedulerUnavailable as exc:  # recorded: the next look at it, or a replica's start, submits it
            log.warning("job %s: %s; it is submitted when the scheduler answers", job.id, exc)
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
        if job is None and self.shared:  # submitted through another replica: found by its id alone
            job = self._from_index(job_id)
        if job is None and not self.scanned.is_set():
            # Just after a start the jobs of earlier gateways are still being read from storage: answer
            # once they are, not with a 404 for a job that exists.
            self._wait_for_scan()
            with self.lock:
                job = self.jobs.get(job_id)
        if job is None or not caller.may_see(job.spec.owner):
            raise ApiProblem(404, "Not found", f"no job {job_id!r}")
        self._refresh([job])
        return job

    def list(self, caller: Caller = LOCAL) -> list[Job]:
        self._wait_for_scan()  # a list without the earlier gateways' jobs would mislead
        if self.shared:
            with self.lock:
                missing = [job_id for job_id in self._indexed() if job_id not in self.jobs]
            for job_id in missing:
                self._from_index(job_id)
        jobs = [job for job in self._cached() if caller.may_see(job.spec.owner)]
        self._refresh(jobs)
        return sorted(jobs, key=lambda j: j.spec.created, reverse=True)

    def _cached(self) -> list[Job]:
        with self.lock:
            return list(self.jobs.values())

    def _indexed(self) -> list[str]:
        try:
            return indexed_ids(self.storage, self.root)
        except StorageError as exc:
            raise ApiProblem(503, "Storage unavailable", f"the job index cannot be read: {exc}") from exc

    def _from_index(self, job_id: str) -> Job | None:
        """A job's record read from storage through the index, kept in the cache; None when there is none."""
        try:
            paths = find(self.storage, self.root, job_id)
            data = self.storage.get_bytes(paths.key(SPEC)) if paths is not None else None
        except StorageError as exc:
            raise ApiProblem(503, "Storage unavailable", f"could not read job {job_id}: {exc}") from exc
        if data is None:
            return None
        try:
            job = _job_of(JobSpec.model_validate_json(data), paths)
        except ValueError as exc:
            log.warning("job %s: unreadable %s (%s)", job_id, SPEC, exc)
            return None
        with self.lock:
            return self.jobs.setdefault(job_id, job)

    def _refresh(self, jobs: list[Job]) -> None:
        """Bring records up to date from where the truth lives (a no-op for the local executor)."""
        try:
            for job in jobs:
                self.executor.refresh(job)
        except StorageError as exc:
            self.metrics.errors.labels("storage").inc()
            raise ApiProblem(503, "Storage unavailable", f"could not read the job's state: {exc}") from exc

    def cancel(self, job_id: str, caller: Caller = LOCAL) -> Job:
        """Stop a job: the marker first (every replica and worker reads it), then its tasks."""
        job = self.get(job_id, caller)
        if job.state in TERMINAL_STATES and job.state != "failed":
            raise ApiProblem(409, "Conflict", f"job {job_id} has already {job.state}")
        job.cancel.set()
        try:
            self.storage.put_bytes(
                job.key(CANCELLED), canonical_json({"cancelled": datetime.now(UTC).isoformat()})
            )
        except StorageError as exc:
            if self.shared:  # without the marker, the workers and the other replicas would not know
                raise ApiProblem(503, "Storage unavailable", f"could not record the cancel: {exc}") from exc
            log.warning("job %s: could not record the cancellation (%s)", job_id, exc)
        try:
            self.executor.cancel(job)
        except SchedulerUnavailable as exc:  # its workers stop at cancelled.json all the same
            log.warning("job %s: %s; its tasks stop when they read the marker", job_id, exc)
        if self.shared:
            try:  # a manifest written in the moment before the marker: the cancel wins
                self.storage.delete(job.key(MANIFEST))
            except StorageError as exc:
                log.warning("job %s: could not remove a manifest after the cancel (%s)", job_id, exc)
            job.state, job.error = "cancelled", None
        elif job.state in ("queued", "failed"):
            job.state = "cancelled"
        return job

    def resume(self, job_id: str, caller: Caller = LOCAL) -> Job:
        job = self.get(job_id, caller)
        if job.state != "failed":
            raise ApiProblem(
                409, "Conflict", f"only a failed job can be resumed; job {job_id} is {job.state}"
            )
        job.state, job.error = "queued", None
        try:
            self.executor.resume(job)
        except SchedulerUnavailable as exc:
            raise ApiProblem(503, "Scheduler unavailable", str(exc)) from exc
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


def _job_of(spec: JobSpec, paths: JobPaths) -> Job:
    """The in-memory record of a job: its spec without the label rows."""
    if spec.label_rows is None:
        return Job(spec, paths)
    return Job(spec.model_copy(update={"label_rows": None}), paths, has_rows=True)


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
