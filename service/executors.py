"""Where a job's shards are made: in the gateway's own threads (`LocalExecutor`, the default) or as
tasks on a Dask cluster (`DaskExecutor`, THORAX_EXECUTOR=dask). Both run `service.work.make_shard` for
each shard and `service.work.write_manifest` at the end; they differ only in where those run.

The Dask executor submits every shard of a job as one task whose key is derived from (job id, shard
index), and a final task that writes the manifest from the shards' entries, with `fire_and_forget`:
the scheduler keeps the job going when the gateway that submitted it dies. A gateway submits a job's keys
again only when the scheduler does not hold its manifest task and storage has no manifest (a job it finds
unfinished at its start, or one the scheduler has lost); two replicas doing so at once is harmless, since
the scheduler answers a known key with the task it has, so nothing runs twice. A task that fails is
retried (`retries`), and a lost worker's tasks are rescheduled on the others; since a shard is a pure
function of (model, spec, index), either is harmless. Workers open storage and the model store from their
own THORAX_ settings, which must be the gateway's.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import TYPE_CHECKING

from thoraxclient.schemas import JobSpec, Manifest, ShardEntry

from service import work
from service.backends import BackendError
from service.catalog import Catalog, LoadedModel
from service.layout import CANCELLED, MANIFEST, SPEC, JobPaths
from service.metrics import Metrics
from service.pipeline import POLL_S, Cancelled, Interrupted, StageFailed
from service.settings import Settings
from service.shards import shard_name
from service.storage import Storage, StorageError, open_storage
from thorax.store import StoreError

if TYPE_CHECKING:
    from distributed import Client

    from service.jobs import Job

log = logging.getLogger("thorax.gateway")
TASK_RETRIES = 3  # a task that raised runs again this often; a lost worker's tasks are rescheduled anyway
CONNECT_S = 10.0  # how long a gateway waits for the scheduler before a request is answered 503
CANCEL_POLL_S = 0.5  # how often a worker looks for the job's cancelled.json while making a shard
REFRESH_S = 0.5  # a gateway reads a job's state from storage and the scheduler at most this often


class SchedulerUnavailable(Exception):
    """The Dask scheduler cannot be reached; the job stays recorded in storage and is submitted later."""


def open_executor(settings: Settings, storage: Storage, catalog: Catalog, metrics: Metrics):
    """The executor THORAX_EXECUTOR names: local threads (the default) or a Dask cluster."""
    if settings.executor == "dask":
        return DaskExecutor(settings, storage)
    return LocalExecutor(settings, storage, catalog, metrics)


# ---- local: the gateway's own threads ---------------------------------------------------------------


class LocalExecutor:
    """THORAX_JOB_WORKERS jobs at once in this process, each making its shards one after the other (each
    shard's inference, encoding and upload overlapping). The jobs' progress lives in this process, so the
    gateway runs as one replica."""

    shared = False  # the job records in memory are the truth: no other replica may run these jobs

    def __init__(self, settings: Settings, storage: Storage, catalog: Catalog, metrics: Metrics) -> None:
        self.settings, self.storage, self.catalog, self.metrics = settings, storage, catalog, metrics
        self.queue: queue.Queue[Job] = queue.Queue()
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        for n in range(self.settings.job_workers):
            thread = threading.Thread(target=self._worker, name=f"thorax-job-{n}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def run(self, job: Job) -> None:
        self.queue.put(job)

    resume = run
    adopt = run  # a job found unfinished in storage at start: only this gateway runs it

    def cancel(self, job: Job) -> None:
        job.cancel.set()

    def refresh(self, job: Job) -> None:
        """Nothing to do: the job's thread keeps its record up to date."""

    def check(self) -> None:
        """Always ready: the threads are this process's."""

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
            model = self.catalog.get(
                f"{job.spec.model_name}/{job.spec.model_version}", job.spec.backend, job.spec.precision
            )
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
                self._produce(job, model)
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

    def _produce(self, job: Job, model: LoadedModel) -> None:
        """The job's missing shards, one `make_shard` each, then its manifest."""
        spec = self._whole_spec(job)  # its label rows, for this run only
        self._check(job)
        found = work.find_committed(self.storage, job.paths, spec, model.prior_patterns, job.committed)
        job.committed.update(found)

        def make(index: int) -> ShardEntry:
            self._check(job)
            entry = work.make_shard(
                self.storage, job.paths, spec, model, index, batch_size=self.settings.batch_size,
                metrics=self.metrics, check=lambda: self._check(job), progress=job,
            )  # fmt: skip
            job.committed[index] = entry
            return entry

        for index in range(spec.shards_total):
            if index not in job.committed:
                make(index)
        self._check(job)
        if not work.write_manifest(self.storage, job.paths, spec, job.committed, make, job.cancel.is_set):
            raise Cancelled()

    def _check(self, job: Job) -> None:
        if job.cancel.is_set():
            raise Cancelled()
        if self.stopping.is_set():
            raise Interrupted()

    def _whole_spec(self, job: Job) -> JobSpec:
        """The job's spec with its label rows, read from its job.json when it has any."""
        if not job.has_rows:
            return job.spec
        return read_spec(self.storage, job.paths)


def read_spec(storage: Storage, paths: JobPaths) -> JobSpec:
    data = storage.get_bytes(paths.key(SPEC))
    if data is None:
        raise StorageError(f"{paths.key(SPEC)} is missing")
    return JobSpec.model_validate_json(data)


# ---- Dask: the shards as tasks on a cluster's workers ------------------------------------------------


def shard_key(job_id: str, shard_index: int) -> str:
    return f"thorax-shard-{job_id}-{shard_index}"


def manifest_key(job_id: str) -> str:
    return f"thorax-manifest-{job_id}"


def job_keys(job_id: str, shards_total: int) -> list[str]:
    return [shard_key(job_id, i) for i in range(shards_total)] + [manifest_key(job_id)]


class DaskExecutor:
    """Each shard a task on the Dask cluster at THORAX_DASK_SCHEDULER. Nothing about a job lives in the
    gateway: its state is read from storage and from the scheduler, so any number of replicas share it."""

    shared = True  # any replica answers for any job, from storage

    def __init__(self, settings: Settings, storage: Storage) -> None:
        self.address, self.storage = settings.dask_scheduler, storage
        self._client: Client | None = None
        self._lock = threading.Lock()
        self._stopped = False

    def start(self) -> None:
        # Connect in the background: the gateway starts (and /healthz answers) while the scheduler is away.
        threading.Thread(target=self._connect_quietly, name="thorax-dask-connect", daemon=True).start()

    def _connect_quietly(self) -> None:
        try:
            self.client()
        except SchedulerUnavailable as exc:
            log.warning("%s; retried on the next request", exc)

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._stopped = True
            client, self._client = self._client, None
        if client is not None:
            client.close(timeout=timeout)

    def client(self) -> Client:
        """The connection to the scheduler, made again when it was lost."""
        from distributed import Client

        with self._lock:
            if self._stopped:
                raise SchedulerUnavailable("the gateway is stopping")
            if self._client is not None and self._client.status in ("running", "connecting"):
                return self._client
            if self._client is not None:
                self._client.close(timeout=2)
                self._client = None
            try:
                self._client = Client(self.address, timeout=CONNECT_S, set_as_default=False)
            except Exception as exc:  # refused, timed out, a bad address: all mean "not reachable"
                problem = f"the Dask scheduler {self.address} is not reachable: {exc}"
                raise SchedulerUnavailable(problem) from exc
            return self._client

    def run(self, job: Job) -> None:
        """Submit every shard of the job and the manifest after them. Keys the scheduler already has (a
        running task, a finished one its manifest still needs) are not run again."""
        from distributed import fire_and_forget

        client = self.client()
        shards = [
            client.submit(run_shard, job.paths, index, key=shard_key(job.id, index), retries=TASK_RETRIES,
                          pure=False)
            for index in range(job.spec.shards_total)
        ]  # fmt: skip
        final = client.submit(
            run_manifest, job.paths, *shards, key=manifest_key(job.id), retries=TASK_RETRIES, pure=False
        )
        fire_and_forget(final)  # the job goes on if this gateway dies; our futures may go

    def adopt(self, job: Job) -> None:
        """A job this gateway found unfinished in storage at its start: submitted unless the scheduler
        still runs it or it has finished since the scan looked. The scheduler is asked first, as in
        `refresh`: it forgets a job's tasks once the manifest task is done, and that task writes the
        manifest before it ends, so no task and no manifest means nobody is running the job. Submitting
        its keys after the job ended would run every task again (each would only read its shard back,
        but each would run twice); SchedulerUnavailable goes to the caller, which retries."""
        states = task_states(self.client(), job_keys(job.id, job.spec.shards_total))
        if manifest_key(job.id) in states:
            return  # held to its end by fire_and_forget; `refresh` follows it
        if any(self.storage.size(job.paths.key(name)) is not None for name in (CANCELLED, MANIFEST)):
            return  # ended since the scan; the next `refresh` reads how
        self.run(job)

    def resume(self, job: Job) -> None:
        """A failed job again: the scheduler's failed tasks go first (it would answer their keys with the
        old error), then every key is submitted anew."""
        self.cancel(job)
        self.run(job)

    def cancel(self, job: Job) -> None:
        """Stop the job's tasks on the scheduler, whoever submitted them; a task already running on a
        worker stops at its next look at cancelled.json (written before this)."""
        from distributed import Future

        client = self.client()
        keys = job_keys(job.id, job.spec.shards_total)
        client.cancel([Future(key, client) for key in keys], force=True)

    def check(self) -> None:
        """Raise SchedulerUnavailable unless the scheduler answers (the readiness probe calls it)."""
        try:
            self.client().run_on_scheduler(_worker_count)
        except SchedulerUnavailable:
            raise
        except Exception as exc:
            raise SchedulerUnavailable(f"the Dask scheduler {self.address} did not answer: {exc}") from exc

    def refresh(self, job: Job) -> None:
        """The job's state from storage (cancelled, succeeded, its committed shards) and the scheduler
        (running, failed); a job the scheduler has lost is submitted again."""
        if job.state in ("succeeded", "cancelled"):
            return  # final: a cancel wins over a manifest, and no manifest follows a cancel
        if time.monotonic() - job.refreshed < REFRESH_S:
            return  # clients polling fast cost the scheduler and storage one look per REFRESH_S
        job.refreshed = time.monotonic()
        try:  # the scheduler first: a task it has forgotten has written its shard or manifest already
            states = task_states(self.client(), job_keys(job.id, job.spec.shards_total))
        except SchedulerUnavailable as exc:
            states, job.error = None, str(exc)
        if self.storage.size(job.paths.key(CANCELLED)) is not None:
            job.state, job.error = "cancelled", None
            return
        data = self.storage.get_bytes(job.paths.key(MANIFEST))
        if data is not None:
            try:
                job.committed = dict(enumerate(Manifest.model_validate_json(data).shards))
            except ValueError as exc:
                job.state = "failed"
                job.error = f"its {MANIFEST} in storage is unreadable ({type(exc).__name__}); POST resume"
                return
            job.state, job.error = "succeeded", None
            return
        job.committed.update(work.recorded_entries(self.storage, job.paths, job.committed))
        if states is None:
            return
        errors = [text for state, text in states.values() if state == "erred"]
        if errors:
            job.state = "failed"
            job.error = f"{errors[0]}; POST {job.id}/resume runs its failed shards again"
        elif not states:
            log.info("job %s: the scheduler holds none of its tasks; submitting them again", job.id)
            job.state, job.error = "queued", None
            self.run(job)
        else:
            busy = any(state in ("processing", "memory") for state, _ in states.values())
            job.state, job.error = ("running" if busy or job.committed else "queued"), None


def task_states(client: Client, keys: list[str]) -> dict[str, tuple[str, str]]:
    """key -> (state, error text) of the keys the scheduler holds."""

    def states(dask_scheduler, keys: list[str]) -> dict[str, tuple[str, str]]:
        # Sent by value (a local function), so the scheduler needs none of this project's modules.
        found = {}
        for key in keys:
            task = dask_scheduler.tasks.get(key)
            if task is not None:
                found[key] = (task.state, str(task.exception_text or ""))
        return found

    return client.run_on_scheduler(states, keys=keys)


def _worker_count(dask_scheduler) -> int:
    return len(dask_scheduler.workers)


# ---- what runs on a Dask worker ----------------------------------------------------------------------


class WorkerSide:
    """What a worker process keeps between tasks: its settings (THORAX_ variables, as the gateway's), its
    storage, the models it has loaded (each once, verified through the model store) and job specs."""

    def __init__(self) -> None:
        self.settings = Settings()
        self.storage = open_storage(self.settings)
        self.catalog = Catalog(self.settings)
        self.metrics = Metrics()
        self.specs: dict[str, JobSpec] = {}
        self.lock = threading.Lock()

    def spec(self, paths: JobPaths) -> JobSpec:
        if paths.location != self.storage.location:
            raise RuntimeError(
                f"this worker's storage is {self.storage.location}, the job's is {paths.location}: start "
                "the workers with the gateway's THORAX_ storage settings"
            )
        with self.lock:
            spec = self.specs.get(paths.job_id)
        if spec is None:
            spec = read_spec(self.storage, paths)
            with self.lock:
                while len(self.specs) >= 16:
                    self.specs.pop(next(iter(self.specs)))
                self.specs[paths.job_id] = spec
        return spec

    def model(self, spec: JobSpec) -> LoadedModel:
        model = self.catalog.get(f"{spec.model_name}/{spec.model_version}", spec.backend, spec.precision)
        if model.card_sha256 != spec.model_card_sha256:
            raise RuntimeError(f"the card of {model.ref} on this worker is not the one the job was made for")
        return model

    def cancelled(self, paths: JobPaths) -> bool:
        return self.storage.size(paths.key(CANCELLED)) is not None

    def watch(self, paths: JobPaths):
        """A `check()` for the pipeline that raises Cancelled once the job's cancelled.json appears."""
        looked = [0.0]

        def check() -> None:
            now = time.monotonic()
            if now - looked[0] >= CANCEL_POLL_S:
                looked[0] = now
                if self.cancelled(paths):
                    raise Cancelled()

        return check

    def make(self, paths: JobPaths, spec: JobSpec, model: LoadedModel, index: int) -> ShardEntry:
        return work.make_shard(
            self.storage, paths, spec, model, index, batch_size=self.settings.batch_size,
            metrics=self.metrics, check=self.watch(paths),
        )  # fmt: skip

    def retrying(self, task):
        """Run `task()`, retrying storage errors with backoff for THORAX_STORAGE_RETRY_SECONDS."""
        started, delay = time.monotonic(), 0.5
        while True:
            try:
                return task()
            except StorageError as exc:
                if time.monotonic() - started >= self.settings.storage_retry_seconds:
                    raise
                log.warning("storage error (%s); retrying in %.1fs", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)


_side: WorkerSide | None = None
_side_lock = threading.Lock()


def worker_side() -> WorkerSide:
    global _side
    with _side_lock:
        if _side is None:
            _side = WorkerSide()
        return _side


def run_shard(paths: JobPaths, shard_index: int) -> dict | None:
    """The task of one shard: its entry (as a dict), or None when the job is cancelled."""
    side = worker_side()

    def task() -> dict | None:
        spec = side.spec(paths)
        if side.cancelled(paths):
            return None
        model = side.model(spec)
        if side.storage.size(paths.key(shard_name(shard_index))) is not None:  # made before, maybe elsewhere
            recorded = side.storage.get_bytes(paths.entry_key(shard_index))
            entry = (
                ShardEntry.model_validate_json(recorded) if recorded is not None
                else work.entry_from_bytes(side.storage, paths, spec, model.prior_patterns, shard_index)
            )  # fmt: skip
            return entry.model_dump(mode="json")
        try:
            return side.make(paths, spec, model, shard_index).model_dump(mode="json")
        except Cancelled:
            return None

    return side.retrying(task)


def run_manifest(paths: JobPaths, *entries: dict | None) -> bool:
    """The final task: the manifest from the shards' entries. False when the job is cancelled."""
    side = worker_side()

    def task() -> bool:
        if any(entry is None for entry in entries) or side.cancelled(paths):
            return False
        spec = side.spec(paths)
        model = side.model(spec)
        known = {i: ShardEntry.model_validate(entry) for i, entry in enumerate(entries)}
        try:
            return work.write_manifest(
                side.storage, paths, spec, known, lambda i: side.make(paths, spec, model, i),
                lambda: side.cancelled(paths),
            )  # fmt: skip
        except Cancelled:
            return False

    return side.retrying(task)
