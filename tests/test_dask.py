"""Issue 14: one job over several Dask workers, and two gateway replicas over one bucket.

Every part is a real process on 127.0.0.1: SeaweedFS, a Dask scheduler, two workers (one thread each, no
nanny, so that a SIGKILL kills the worker itself) and two gateways with THORAX_EXECUTOR=dask, all on the
tiny exported model. The tests stop only what they started, by pid. Waits are on events (a shard
committed, a task on a worker, a job's state), each bounded generously.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest

from tests.gateway_helpers import samples, wait_for_job, wait_until
from tests.servers import dask_scheduler, dask_worker, gateway, seaweedfs

pytest.importorskip("distributed")

BUCKET = "dask-jobs"
# Batches of one image keep the tiny model's shards slow enough to act on a job mid-way.
JOB = {"count": 600, "shard_size": 20}


class Cluster:
    """SeaweedFS, a scheduler, its workers and two gateways; gateways and workers can be killed and
    started again."""

    def __init__(self, stack: ExitStack, root: Path, endpoint: str, address: str, env: dict[str, str]):
        from distributed import Client
        from minio import Minio

        self.stack, self.root, self.endpoint, self.address, self.env = stack, root, endpoint, address, env
        self.workers: dict[str, subprocess.Popen] = {}
        self.gateways: list[str] = []
        self.gateway_procs: list[subprocess.Popen] = []
        self.gateway_stacks: list[ExitStack] = []
        self.s3 = Minio(endpoint=endpoint, access_key="any", secret_key="anything", secure=False)
        self.client = stack.enter_context(Client(address, set_as_default=False, timeout=30))
        self.client.get_task_stream()  # installs the scheduler's task records from here on

    def add_worker(self, name: str) -> subprocess.Popen:
        proc = self.stack.enter_context(dask_worker(self.address, self.env, self.root / "workers", name))
        self.workers[name] = proc
        return proc

    def start_gateways(self, n: int = 2) -> list[str]:
        """n gateways started at the same time (as replicas restarting together)."""

        def start(i: int) -> tuple[str, subprocess.Popen, ExitStack]:
            stack = ExitStack()
            url, proc = stack.enter_context(gateway(self.env, self.root / "gateways"))
            return url, proc, stack

        with ThreadPoolExecutor(n) as pool:
            started = list(pool.map(start, range(n)))
        self.gateways = [url for url, _, _ in started]
        self.gateway_procs = [proc for _, proc, _ in started]
        self.gateway_stacks += [stack for _, _, stack in started]
        return self.gateways

    @contextmanager
    def paused_workers(self):
        """The live workers SIGSTOPped, so that no task of a job moves on, and SIGCONTinued after (a few
        seconds are far inside the scheduler's worker time-to-live)."""
        live = [proc for proc in self.workers.values() if proc.poll() is None]
        for proc in live:
            os.kill(proc.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for proc in live:
                os.kill(proc.pid, signal.SIGCONT)

    def first_shard(self, job: dict) -> None:
        """Wait for the job's first shard in storage (the job's other shards take seconds more)."""
        folder = folder_of(job)
        wait_until(lambda: any(n.startswith("shard-") for n in self.names(folder)), 120, "a shard of the job")

    def kill_gateways(self) -> None:
        for proc in self.gateway_procs:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        self.close_gateways()

    def close_gateways(self) -> None:
        while self.gateway_stacks:
            self.gateway_stacks.pop().close()

    def read(self, key: str) -> bytes | None:
        from minio.error import S3Error

        try:
            response = self.s3.get_object(bucket_name=BUCKET, object_name=key)
        except S3Error as exc:
            if exc.code == "NoSuchKey":
                return None
            raise
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def names(self, folder: str) -> set[str]:
        """The objects directly in a folder of the bucket."""
        objects = self.s3.list_objects(bucket_name=BUCKET, prefix=folder.rstrip("/") + "/")
        return {o.object_name.rpartition("/")[2] for o in objects if not o.is_dir}

    def shard_records(self, job_id: str, since: float) -> dict[str, list[str]]:
        """Shard key -> the workers (names) that ran it, from the scheduler's task records."""
        names = {address: info["name"] for address, info in self.client.scheduler_info()["workers"].items()}
        runs: dict[str, list[str]] = {}
        for record in self.client.get_task_stream(start=since):
            if str(record["key"]).startswith(f"thorax-shard-{job_id}-"):
                runs.setdefault(str(record["key"]), []).append(names.get(record["worker"], record["worker"]))
        return runs

    def busy_with(self, job_id: str) -> dict[str, list[str]]:
        """Worker address -> the tasks of the job it is executing now."""

        def executing(dask_worker) -> list[str]:
            return [str(task.key) for task in dask_worker.state.executing]

        found = self.client.run(executing)
        return {addr: [k for k in keys if job_id in k] for addr, keys in found.items() if job_id in str(keys)}


@pytest.fixture(scope="module")
def cluster(tiny_store: Path, tmp_path_factory):
    from minio import Minio

    root = tmp_path_factory.mktemp("dask")
    with ExitStack() as stack:
        endpoint = stack.enter_context(seaweedfs(root / "weed"))
        Minio(endpoint=endpoint, access_key="any", secret_key="anything", secure=False).make_bucket(
            bucket_name=BUCKET
        )
        address = stack.enter_context(dask_scheduler(root / "scheduler"))
        env = {"THORAX_MODEL_STORE": str(tiny_store), "THORAX_S3_ENDPOINT": endpoint,
               "THORAX_S3_BUCKET": BUCKET, "THORAX_S3_ACCESS_KEY": "any", "THORAX_S3_SECRET_KEY": "anything",
               "THORAX_BATCH_SIZE": "1", "THORAX_ONNX_THREADS": "1", "THORAX_EXECUTOR": "dask",
               "THORAX_DASK_SCHEDULER": address}  # fmt: skip
        cluster = Cluster(stack, root, endpoint, address, env)
        cluster.add_worker("w1")
        cluster.add_worker("w2")
        cluster.start_gateways()
        try:
            yield cluster
        finally:
            cluster.close_gateways()


def submit(url: str, body: dict) -> dict:
    created = httpx.post(f"{url}/generate", json=body, timeout=30)
    assert created.status_code == 202, created.text
    return created.json()


def status(url: str, job_id: str) -> dict:
    answer = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def folder_of(job: dict) -> str:
    return job["location"].removeprefix(f"s3://{BUCKET}/").rstrip("/")


def test_a_job_submitted_through_a_is_followed_listed_read_and_finished_through_b(cluster: Cluster) -> None:
    """Any replica answers for any job, from storage: B follows, lists, reads shard by shard and fetches
    the manifest of A's job, found by its id alone under a prefix. Its shards ran on both workers."""
    a, b = cluster.gateways
    since = time.time()
    job = submit(a, {"count": 120, "shard_size": 10, "seed": 7, "prefix": "team/radiology"})
    assert status(b, job["id"])["id"] == job["id"]  # at once, before anything is committed
    final = wait_for_job(lambda: status(b, job["id"]), 180)
    assert final["state"] == "succeeded" and final["images_done"] == 120 and final["shards_done"] == 12, final
    listed = httpx.get(f"{b}/v1/jobs", timeout=30).json()["jobs"]
    assert job["id"] in [j["id"] for j in listed]
    entries = httpx.get(f"{b}/v1/jobs/{job['id']}/shards", timeout=30).json()["shards"]
    shards = []
    for n, entry in enumerate(entries):
        data = httpx.get(f"{b}/v1/jobs/{job['id']}/shards/{n}", timeout=30).content
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["bytes"]
        shards.append(data)
    manifest = httpx.get(f"{b}/v1/jobs/{job['id']}/manifest", timeout=30).json()
    assert manifest["images"] == 120
    listed_entries = [(e["name"], e["sha256"]) for e in entries]
    assert [(s["name"], s["sha256"]) for s in manifest["shards"]] == listed_entries
    assert sorted(samples(shards)) == [f"{i:09d}" for i in range(120)]
    runs = cluster.shard_records(job["id"], since)
    assert len(runs) == 12 and {worker for workers in runs.values() for worker in workers} == {"w1", "w2"}


def test_a_worker_killed_mid_job_leaves_exactly_count_images(cluster: Cluster) -> None:
    """A worker SIGKILLed while it makes a shard: the scheduler runs its tasks on the other worker, and
    the job ends with exactly `count` images, no key twice, every checksum as the manifest says."""
    a, b = cluster.gateways
    victim = cluster.workers["w1"]
    job = submit(a, {**JOB, "seed": 11})
    names = lambda: {info["name"]: addr for addr, info in cluster.client.scheduler_info()["workers"].items()}  # noqa: E731
    wait_until(lambda: names()["w1"] in cluster.busy_with(job["id"]), 120, "a shard of the job on w1")
    assert status(b, job["id"])["state"] in ("queued", "running")
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    final = wait_for_job(lambda: status(b, job["id"]), 300)
    cluster.add_worker("w3")  # two workers again for the tests after this one
    assert final["state"] == "succeeded" and final["images_done"] == JOB["count"], final
    folder = folder_of(final)
    manifest = httpx.get(f"{a}/v1/jobs/{job['id']}/manifest", timeout=30).json()
    shards = [cluster.read(f"{folder}/{entry['name']}") for entry in manifest["shards"]]
    for entry, data in zip(manifest["shards"], shards, strict=True):
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["bytes"]
    keys = [key for data in shards for key in samples([data])]
    assert keys == [f"{i:09d}" for i in range(JOB["count"])]  # exactly count, none twice
    stored = sorted(n for n in cluster.names(folder) if n.startswith("shard-"))
    assert stored == [e["name"] for e in manifest["shards"]]


def test_both_gateways_killed_mid_job_and_restarted_finish_it_as_one_local_gateway_would(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both gateways SIGKILLed mid-job and started again together while the job is still unfinished (its
    workers are paused from its first shard until the new gateways answer): the job completes, no shard
    is made twice, and its manifest has the bytes that a single gateway with the local executor writes
    for the same job spec."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    since = time.time()
    job = submit(cluster.gateways[0], {**JOB, "seed": 13, "labels": {"Effusion": 1}})
    cluster.first_shard(job)
    with cluster.paused_workers():
        before = status(cluster.gateways[0], job["id"])
        assert before["state"] == "running" and before["shards_done"] < before["shards_total"], before
        cluster.kill_gateways()
        a, b = cluster.start_gateways()
        for url in (a, b):  # both have read the job from storage: unfinished, since no worker moved
            found = status(url, job["id"])
            unfinished = found["shards_done"] < found["shards_total"]
            assert found["state"] in ("queued", "running") and unfinished, found
    final = wait_for_job(lambda: status(a, job["id"]), 300)
    assert final["state"] == "succeeded" and final["images_done"] == JOB["count"], final
    stored = httpx.get(f"{b}/v1/jobs/{job['id']}/manifest", timeout=30).content
    runs = cluster.shard_records(job["id"], since)
    assert len(runs) == JOB["count"] // JOB["shard_size"]
    assert all(len(workers) == 1 for workers in runs.values()), runs  # dedup: each shard made once

    # The same job spec (its job.json), run by one gateway with the local executor and a local folder.
    folder = folder_of(final)
    local = tmp_path / "local"
    (local / folder).mkdir(parents=True)
    (local / folder / "job.json").write_bytes(cluster.read(f"{folder}/job.json"))
    monkeypatch.setenv("THORAX_MODEL_STORE", cluster.env["THORAX_MODEL_STORE"])
    with TestClient(create_app(Settings(storage_dir=local, batch_size=8))) as client:  # resumes it at start
        wait_for_job(lambda: client.get(f"/v1/jobs/{job['id']}").json(), 120)
    assert (local / folder / "manifest.json").read_bytes() == stored


def test_a_job_that_ends_between_a_gateways_scan_and_its_submission_is_not_run_again(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A starting gateway reads an unfinished job from storage; the job ends (the scheduler forgets its
    tasks) before the gateway submits it. Adopting it then submits nothing: every shard ran once."""
    from service.catalog import Catalog
    from service.executors import job_keys, task_states
    from service.jobs import JobManager
    from service.metrics import Metrics
    from service.settings import Settings
    from service.storage import open_storage

    for name, value in cluster.env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    storage = open_storage(settings)
    manager = JobManager(settings, storage, Catalog(settings), Metrics())
    since = time.time()
    job = submit(cluster.gateways[0], {**JOB, "seed": 19})
    cluster.first_shard(job)
    with cluster.paused_workers():
        found = [j for j in manager._load_jobs() if j.id == job["id"]]  # the scan: unfinished
    assert len(found) == 1
    keys = job_keys(job["id"], found[0].spec.shards_total)
    final = wait_for_job(lambda: status(cluster.gateways[1], job["id"]), 300)
    assert final["state"] == "succeeded", final
    wait_until(lambda: not task_states(cluster.client, keys), 60, "the scheduler to forget the job's tasks")
    executor = manager.executor
    try:
        executor.adopt(found[0])
        # Anything adopt submitted went before this marker on the same connection.
        assert executor.client().submit(len, "marker", pure=False).result(timeout=60) == 6
        assert task_states(cluster.client, keys) == {}
    finally:
        executor.stop()
    runs = cluster.shard_records(job["id"], since)
    assert len(runs) == JOB["count"] // JOB["shard_size"]
    assert all(len(workers) == 1 for workers in runs.values()), runs


def test_a_cancel_through_b_stops_the_work_a_submitted(cluster: Cluster) -> None:
    """B cancels a job that A submitted: its tasks stop on the workers, no shard follows and no manifest."""
    a, b = cluster.gateways
    # ten times the usual job, so that on a busy machine it is still running when the cancel arrives
    # (600 images took a few seconds); a cancelled job stops within a shard, so this costs no time
    large = {**JOB, "count": 10 * JOB["count"], "seed": 17}
    job = submit(a, large)
    wait_until(lambda: status(b, job["id"])["shards_done"] >= 1, 120, "a committed shard")
    cancelled = httpx.delete(f"{b}/v1/jobs/{job['id']}", timeout=30)
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled", cancelled.text
    wait_until(lambda: not cluster.busy_with(job["id"]), 60, "the workers to stop the job's tasks")
    folder = folder_of(cancelled.json())
    before = cluster.names(folder)
    time.sleep(2)  # a bounded look for anything that would still arrive
    after = cluster.names(folder)
    assert after == before and "manifest.json" not in after and "cancelled.json" in after
    assert len([n for n in after if n.startswith("shard-")]) < large["count"] // large["shard_size"]
    assert status(a, job["id"])["state"] == "cancelled"
    assert httpx.delete(f"{a}/v1/jobs/{job['id']}", timeout=30).status_code == 409


def test_thorax_generate_runs_a_job_on_the_cluster(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """`thorax generate --executor dask --scheduler ADDRESS`: the CLI's job, made by the workers."""
    from thorax.cli import main

    for name, value in cluster.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("THORAX_EXECUTOR")
    monkeypatch.delenv("THORAX_DASK_SCHEDULER")
    argv = ["generate", "--count", "6", "--shard-size", "3", "--seed", "2", "--prefix", "cli"]
    assert main([*argv, "--executor", "dask", "--scheduler", cluster.address]) == 0
    printed = capsys.readouterr().out
    assert "succeeded: 6 images" in printed, printed
    job_id = printed.split()[1].rstrip(":")
    assert cluster.read(f"cli/{job_id}/manifest.json") is not None
    assert main([*argv, "--executor", "dask"]) == 2
    assert "--scheduler" in capsys.readouterr().err
