"""The gateway against real servers on loopback: SeaweedFS as the S3 store, `thorax serve` as a process
(killed with SIGKILL mid-job and restarted), and TorchServe as its backend."""

from __future__ import annotations

import io
import json
import os
import signal
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from minio import Minio
from PIL import Image

from service.app import create_app
from service.settings import Settings
from tests.gateway_helpers import TERMINAL, read_with_webdataset, samples, sha256, wait_for_job, wait_until
from tests.servers import gateway, seaweedfs, seaweedfs_ports, torchserve
from thorax.store import open_model

pytestmark = pytest.mark.slow
BUCKET = "thorax-test"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def bucket(s3: str) -> Minio:
    return Minio(endpoint=s3, access_key="any", secret_key="anything", secure=False)


def gateway_env(store: Path, s3: str, **extra: str) -> dict[str, str]:
    return {
        "THORAX_MODEL_STORE": str(store), "THORAX_S3_ENDPOINT": s3, "THORAX_S3_BUCKET": BUCKET,
        "THORAX_S3_ACCESS_KEY": "any", "THORAX_S3_SECRET_KEY": "anything", "THORAX_STORAGE_PREFIX": "jobs",
        "THORAX_ONNX_THREADS": "1", "THORAX_API_KEYS": "secret", **extra,
    }  # fmt: skip


def api(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": "Bearer secret"}, timeout=30)


def objects(bucket: Minio, prefix: str) -> dict[str, bytes]:
    out = {}
    for obj in bucket.list_objects(bucket_name=BUCKET, prefix=prefix, recursive=True):
        response = bucket.get_object(bucket_name=BUCKET, object_name=obj.object_name)
        try:
            out[obj.object_name.rpartition("/")[2]] = response.read()
        finally:
            response.close()
            response.release_conn()
    return out


def job_prefix(status: dict) -> str:
    return status["location"].removeprefix(f"s3://{BUCKET}/")


def test_s3_jobs_from_a_gateway_process(tiny_store: Path, s3: str, bucket: Minio, tmp_path: Path) -> None:
    body = {"count": 45, "shard_size": 20, "seed": 21, "labels": {"Pneumothorax": 1}, "prefix": "team/a"}
    with gateway(gateway_env(tiny_store, s3), tmp_path) as (url, _), api(url) as client:
        assert client.get("/readyz").status_code == 200
        assert httpx.get(f"{url}/v1/jobs").status_code == 401  # no key
        created = client.post("/generate", json=body)
        assert created.status_code == 202
        status = wait_for_job(lambda: client.get(created.json()["url"]).json(), 120)
        assert status["state"] == "succeeded" and status["location"].startswith(f"s3://{BUCKET}/jobs/team/a/")
        twin = client.post("/v1/jobs", json=body).json()
        assert wait_for_job(lambda: client.get(twin["url"]).json(), 120)["state"] == "succeeded"
        manifest = client.get(f"/v1/jobs/{status['id']}/manifest").json()
        escape = client.post("/generate", json={**body, "prefix": "../../other"})
        assert escape.status_code == 422 and escape.json()["errors"][0]["field"] == "prefix"
        metrics = client.get("/metrics").text
        assert 'thorax_images_generated_total{model="tiny/1"} 90.0' in metrics

    stored = objects(bucket, job_prefix(status))
    assert sorted(stored) == ["job.json", "manifest.json", *(f"shard-{i:06d}.tar" for i in range(3))]
    assert json.loads(stored["manifest.json"]) == manifest
    assert manifest["images"] == 45 and manifest["label_counts"]["Pneumothorax"] == 45
    for shard in manifest["shards"]:
        assert shard["sha256"] == sha256(stored[shard["name"]])
    twin_stored = objects(bucket, job_prefix(twin))
    assert [twin_stored[f"shard-{i:06d}.tar"] for i in range(3)] == [
        stored[f"shard-{i:06d}.tar"] for i in range(3)
    ]

    paths = []
    for i in range(3):
        paths.append(tmp_path / f"shard-{i:06d}.tar")
        paths[-1].write_bytes(stored[paths[-1].name])
    rows = read_with_webdataset(paths)
    assert [r["key"] for r in rows] == [f"{i:09d}" for i in range(45)]
    assert all(r["json"]["labels"]["Pneumothorax"] == 1.0 and r["json"]["seed"] == 21 for r in rows)
    assert all(Image.open(io.BytesIO(r["image"])).size == (16, 16) for r in rows)


def test_a_gateway_killed_mid_job_resumes_with_exactly_count_images(
    tiny_store: Path, s3: str, bucket: Minio, tmp_path: Path
) -> None:
    count, shard_size, part_size = 12000, 2400, 5 * 1024 * 1024  # shards of about 6 MB: multipart uploads
    env = gateway_env(tiny_store, s3, THORAX_BATCH_SIZE="4", THORAX_S3_PART_SIZE=str(part_size))
    with gateway(env, tmp_path) as (url, proc), api(url) as client:
        job = client.post("/generate", json={"count": count, "shard_size": shard_size, "seed": 8}).json()

        def some_shards() -> dict | None:
            status = client.get(job["url"]).json()
            return status if status["shards_done"] >= 2 or status["state"] in TERMINAL else None

        before = wait_until(some_shards, 120, "two committed shards")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert before["state"] == "running", "the job finished before the kill; make it larger"
    prefix = job_prefix(before)
    left = objects(bucket, prefix)
    assert "manifest.json" not in left and len(left) - 1 < count // shard_size

    with gateway(env, tmp_path) as (url, _), api(url) as client:
        status = wait_for_job(lambda: client.get(f"/v1/jobs/{job['id']}").json(), 240)  # a new port
        assert status["state"] == "succeeded" and status["images_done"] == count
    stored = objects(bucket, prefix)
    manifest = json.loads(stored["manifest.json"])
    shards = [stored[s["name"]] for s in manifest["shards"]]
    assert len(shards) == count // shard_size and manifest["images"] == count
    assert all(s["bytes"] > part_size for s in manifest["shards"])  # each went up in several parts
    assert all(s["sha256"] == sha256(data) for s, data in zip(manifest["shards"], shards, strict=True))
    keys = [key for data in shards for key in samples([data])]
    assert keys == [f"{i:09d}" for i in range(count)]  # every image once, in order, none twice
    for name, data in left.items():  # shards committed before the kill were kept as they were
        if name.startswith("shard-"):
            assert stored[name] == data


def test_torchserve_backend_gives_the_onnxruntime_images(tiny_store: Path, tmp_path: Path) -> None:
    model = open_model(None, tiny_store)
    body = {"count": 10, "shard_size": 10, "seed": 31, "labels": {"prior": "model", "fixed": {"Edema": 1}}}

    def run(settings: Settings) -> dict[str, dict[str, bytes]]:
        with TestClient(create_app(settings)) as client:
            out = {}
            for resolution in (16, 8):
                job = client.post("/generate", json={**body, "resolution": resolution}).json()
                status = wait_for_job(lambda job=job: client.get(job["url"]).json(), 120)
                assert status["state"] == "succeeded", status
                folder = Path(status["location"])
                for key, value in samples([p.read_bytes() for p in sorted(folder.glob("shard-*"))]).items():
                    out[f"{resolution}/{key}"] = value
            return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("THORAX_MODEL_STORE", str(tiny_store))
        onnx = run(Settings(storage_dir=tmp_path / "onnx", batch_size=4, backend="onnxruntime"))
        with torchserve(model.file("mar"), tmp_path / "ts") as ts_url:
            served = run(
                Settings(storage_dir=tmp_path / "ts-data", backend="torchserve", torchserve_url=ts_url)
            )
    assert sorted(onnx) == sorted(served) and len(onnx) == 20
    for key in onnx:
        a = np.asarray(Image.open(io.BytesIO(onnx[key]["png"])), np.int16)
        b = np.asarray(Image.open(io.BytesIO(served[key]["png"])), np.int16)
        assert np.abs(a - b).max() <= 1, key
        # the same metadata, but for the spec's checksum: a job's spec records its backend
        ours, theirs = json.loads(onnx[key]["json"]), json.loads(served[key]["json"])
        assert ours.pop("spec_sha256") != theirs.pop("spec_sha256") and ours == theirs


def test_a_storage_outage_is_retried_or_fails_clearly_and_resumes(tiny_store: Path, tmp_path: Path) -> None:
    ports, weed_dir = seaweedfs_ports(), tmp_path / "weed"
    endpoint = f"127.0.0.1:{ports['s3.port']}"
    count, shard_size = 8000, 200
    body = {"count": count, "shard_size": shard_size, "seed": 3}

    def app(retry_seconds: float) -> TestClient:
        return TestClient(create_app(Settings(
            s3_endpoint=endpoint, s3_bucket=BUCKET, s3_access_key="any", s3_secret_key="anything",
            batch_size=2, storage_retry_seconds=retry_seconds,
        )))  # fmt: skip

    def started(client: TestClient) -> dict:
        # Storage has just come up: the gateway may not have seen it yet (its scan backs off up to 10 s).
        wait_until(lambda: client.get("/readyz").status_code == 200, 60, "a ready gateway")
        created = client.post("/generate", json=body)
        assert created.status_code == 202, created.text
        job = created.json()
        wait_until(lambda: client.get(job["url"]).json()["shards_done"] >= 1, 60, "a committed shard")
        return job

    def check_complete(client: TestClient, job: dict) -> None:
        status = wait_for_job(lambda: client.get(job["url"]).json(), 240)
        assert status["state"] == "succeeded" and status["images_done"] == count, status
        stored = objects(Minio(endpoint=endpoint, access_key="a", secret_key="bbbbbbbb", secure=False),
                         job_prefix(status))  # fmt: skip
        shards = [stored[f"shard-{i:06d}.tar"] for i in range(count // shard_size)]
        assert [k for data in shards for k in samples([data])] == [f"{i:09d}" for i in range(count)]

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("THORAX_MODEL_STORE", str(tiny_store))
        with app(retry_seconds=300) as client:  # storage comes back in time: the job carries on
            with seaweedfs(weed_dir, ports):
                job = started(client)
            assert client.get(job["url"]).json()["state"] == "running"
            assert client.get("/readyz").status_code == 503
            with seaweedfs(weed_dir, ports):
                check_complete(client, job)
        with app(retry_seconds=1) as client:  # storage stays away: the job fails, then resumes on request
            with seaweedfs(weed_dir, ports):
                job = started(client)
            failed = wait_for_job(lambda: client.get(job["url"]).json(), 120)
            assert failed["state"] == "failed" and "storage unavailable" in failed["error"], failed
            assert failed["shards_done"] >= 1
            with seaweedfs(weed_dir, ports):
                resumed = client.post(f"/v1/jobs/{job['id']}/resume")
                assert resumed.status_code == 202 and resumed.json()["state"] == "queued"
                check_complete(client, job)


def test_shard_urls_are_signed_for_the_public_s3_address(
    tiny_store: Path, s3: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway writes through its own S3 address; clients read through THORAX_S3_PUBLIC_ENDPOINT
    (here `localhost` for the gateway's `127.0.0.1`), and the signature holds there."""
    public = s3.replace("127.0.0.1", "localhost")
    monkeypatch.setenv("THORAX_MODEL_STORE", str(tiny_store))
    settings = Settings(
        s3_endpoint=s3, s3_bucket=BUCKET, s3_access_key="any",
        s3_secret_key="anything", s3_public_endpoint=public, storage_prefix="public", batch_size=4,
    )  # fmt: skip
    with TestClient(create_app(settings)) as client:
        job = client.post("/generate", json={"count": 6, "shard_size": 3, "seed": 5}).json()
        assert wait_for_job(lambda: client.get(job["url"]).json(), 120)["state"] == "succeeded"
        shards = client.get(f"/v1/jobs/{job['id']}/manifest", params={"urls": "true"}).json()["shards"]
    assert len(shards) == 2
    for shard in shards:
        assert shard["url"].startswith(f"http://{public}/{BUCKET}/") and "X-Amz-Signature" in shard["url"]
        response = httpx.get(shard["url"], timeout=30)
        assert response.status_code == 200 and sha256(response.content) == shard["sha256"]
