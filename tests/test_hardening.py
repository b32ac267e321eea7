"""Regression tests for issue 12 ("Hardening"): each test names the defect it covers. In-process gateway
(FastAPI's TestClient) on the tiny exported model, storing to a local folder, unless it says otherwise."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.gateway_helpers import samples, wait_for_job, wait_until

pytestmark = pytest.mark.usefixtures("tiny_store_env")  # every test here serves tiny/1


def gateway_settings(tmp: Path, **overrides) -> Settings:
    return Settings(**{"storage_dir": tmp, "batch_size": 8, "onnx_threads": 1, **overrides})


def submit_and_wait(client: TestClient, body: dict, timeout: float = 120.0) -> dict:
    response = client.post("/generate", json=body)
    assert response.status_code == 202, response.text
    return wait_for_job(lambda: client.get(response.json()["url"]).json(), timeout)


def slow_encoder(monkeypatch: pytest.MonkeyPatch, seconds: float, fail_at: int | None = None) -> None:
    """Make the encoder stage take `seconds` per image (and raise at image `fail_at`)."""
    from service.pipeline import SampleEncoder

    encode = SampleEncoder.__call__

    def slowed(self, index, image, label_row):
        time.sleep(seconds)
        if index == fail_at:
            raise ValueError(f"encoder exploded at image {index}")
        return encode(self, index, image, label_row)

    monkeypatch.setattr(SampleEncoder, "__call__", slowed)


# ---- defect 1: end-of-stream and errors travel through the queues ---------------------------------------


@pytest.mark.parametrize("image_format", ["png", "dicom"])
def test_a_slow_encoder_does_not_kill_the_job(
    image_format: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect 1: the last batch took longer to encode than the upload's 0.2 s poll after the inference
    thread had ended, and the job died with "a pipeline stage stopped unexpectedly"."""
    slow_encoder(monkeypatch, 0.04)  # shards of one batch of 8 images: 0.32 s each
    count = 24
    with TestClient(create_app(gateway_settings(tmp_path / "data"))) as client:
        status = submit_and_wait(client, {"count": count, "shard_size": 8, "seed": 2, "format": image_format})
    assert status["state"] == "succeeded", status
    assert status["images_done"] == count and status["shards_done"] == 3
    folder = Path(status["location"])
    keys = samples([p.read_bytes() for p in sorted(folder.glob("shard-*.tar"))])
    assert sorted(keys) == [f"{i:09d}" for i in range(count)]
    assert all(("png" if image_format == "png" else "dcm") in members for members in keys.values())


def test_an_error_in_the_encoder_fails_the_job_with_its_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect 1: a stage's exception reaches the job as a message and fails it with that error."""
    slow_encoder(monkeypatch, 0.0, fail_at=13)
    with TestClient(create_app(gateway_settings(tmp_path / "data"))) as client:
        status = submit_and_wait(client, {"count": 24, "shard_size": 10, "seed": 2})
    assert status["state"] == "failed", status
    assert "encoder exploded at image 13" in status["error"], status
    assert status["shards_done"] == 1  # the shard before the error was committed


def test_an_error_in_inference_fails_the_job_with_its_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect 1: the same for the inference stage."""
    import service.pipeline

    downsample = service.pipeline.downsample

    def failing(images, resolution):
        raise ArithmeticError("inference exploded")

    monkeypatch.setattr(service.pipeline, "downsample", failing)
    with TestClient(create_app(gateway_settings(tmp_path / "data"))) as client:
        status = submit_and_wait(client, {"count": 24, "shard_size": 10, "seed": 2})
    assert status["state"] == "failed" and "inference exploded" in status["error"], status
    monkeypatch.setattr(service.pipeline, "downsample", downsample)


# ---- defect 4: failed jobs are not active ------------------------------------------------------------


def test_failed_generate_runs_in_one_folder_block_no_new_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Defect 4: an unfinished job found in storage and not resumed counted as queued, so failed
    `thorax generate` runs into one --out folder soon refused every new job; and the failure message did
    not say how to finish the job."""
    from thorax.cli import main

    out = tmp_path / "out"
    monkeypatch.setenv("THORAX_MAX_ACTIVE_JOBS", "1")
    with monkeypatch.context() as broken:
        slow_encoder(broken, 0.0, fail_at=1)
        for _ in range(2):
            assert main(["generate", "--count", "3", "--seed", "1", "--out", str(out)]) == 1
            printed = capsys.readouterr()
            assert "encoder exploded at image 1" in printed.out, printed
            assert f"thorax generate --resume --out {out}" in printed.out, printed
    assert main(["generate", "--count", "3", "--seed", "1", "--out", str(out)]) == 0  # not refused
    assert "succeeded: 3 images" in capsys.readouterr().out
    assert main(["generate", "--resume", "--out", str(out)]) == 0  # the two failed ones, finished
    assert capsys.readouterr().out.count("succeeded: 3 images") == 2
    assert len(list(out.glob("*/manifest.json"))) == 3


# ---- defect 3: a job that failed to record leaves no trace ---------------------------------------------


def test_a_too_long_prefix_is_a_422_and_leaves_no_job(tmp_path: Path) -> None:
    """Defect 3: a prefix segment of 256 characters gave a 500 (a raw OSError from the local storage) and
    left a phantom `queued` job; four of them refused every later submit with 429."""
    with TestClient(create_app(gateway_settings(tmp_path / "data", max_active_jobs=4))) as client:
        for _ in range(5):
            response = client.post("/generate", json={"count": 1, "prefix": "x" * 256})
            assert response.status_code == 422, response.text
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["errors"][0]["field"] == "prefix"
        assert client.get("/v1/jobs").json()["jobs"] == []
        assert submit_and_wait(client, {"count": 1, "prefix": "x" * 100})["state"] == "succeeded"
    kept = [p.name for p in (tmp_path / "data").iterdir() if p.name != ".thorax"]  # .thorax: the job index
    assert kept == ["x" * 100]  # nothing of the refused ones


def test_a_job_storage_refuses_to_record_is_a_503_and_leaves_no_job(tmp_path: Path) -> None:
    """Defect 3: when writing job.json fails, the job is neither listed nor counted, and the answer is
    a problem, not a 500. Here a file stands where the job's folder would go."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "blocked").write_text("a file, not a folder")
    with TestClient(create_app(gateway_settings(data, max_active_jobs=1))) as client:
        for _ in range(2):
            response = client.post("/generate", json={"count": 1, "prefix": "blocked"})
            assert response.status_code == 503, response.text
            assert response.headers["content-type"] == "application/problem+json"
            assert "could not record the job" in response.json()["detail"]
        assert client.get("/v1/jobs").json()["jobs"] == []
        assert submit_and_wait(client, {"count": 1})["state"] == "succeeded"  # nothing counts as active


# ---- defect 2: no job's folder inside another's; a job lists only its own objects ----------------------


def test_a_prefix_cannot_put_a_job_inside_another_jobs_folder(tmp_path: Path) -> None:
    """Defect 2: `prefix` = `victim/<A's id>/shard-000002.tar` made a folder where A's shard goes, and A
    failed with `Is a directory`; `victim/<A's id>` put a job's shards among A's."""
    with TestClient(create_app(gateway_settings(tmp_path / "data", batch_size=1))) as client:
        victim = client.post("/generate", json={"count": 600, "shard_size": 100, "prefix": "victim"}).json()
        for prefix in (f"victim/{victim['id']}/shard-000002.tar", f"victim/{victim['id']}", victim["id"]):
            response = client.post("/generate", json={"count": 1, "shard_size": 1, "prefix": prefix})
            assert response.status_code == 422, (prefix, response.text)
            assert response.json()["errors"][0]["field"] == "prefix"
        status = wait_for_job(lambda: client.get(victim["url"]).json(), 120)
    assert status["state"] == "succeeded" and status["images_done"] == 600, status
    assert sorted(p.name for p in Path(status["location"]).iterdir()) == [
        "job.json", "manifest.json", *(f"shard-{i:06d}.tar" for i in range(6))
    ]  # fmt: skip


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    from tests.servers import seaweedfs

    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as endpoint:
        yield endpoint


def storage_settings(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    if kind == "local":
        return gateway_settings(tmp_path / "data")
    from minio import Minio

    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = "hardening-" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:12]
    Minio(endpoint=endpoint, access_key="any", secret_key="anything", secure=False).make_bucket(
        bucket_name=bucket
    )  # before the gateway starts: a submit may come before its start-up check of storage
    return gateway_settings(
        tmp_path, s3_endpoint=endpoint, s3_bucket=bucket, s3_access_key="any", s3_secret_key="anything"
    )


def remove_object(settings: Settings, key: str) -> None:
    if not settings.s3_endpoint:
        (settings.storage_dir / key).unlink()
        return
    from minio import Minio

    client = Minio(endpoint=settings.s3_endpoint, access_key="any", secret_key="anything", secure=False)
    client.remove_object(bucket_name=settings.s3_bucket, object_name=key)


@pytest.mark.parametrize("kind", ["local", pytest.param("s3", marks=pytest.mark.slow)])
def test_a_resumed_job_ignores_shards_in_folders_below_its_own(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Defect 2: a job found its committed shards with a recursive listing, so the shards of a job
    nested in its folder counted as its own, and every resume failed (`NoSuchKey` in S3)."""
    from service.storage import open_storage

    settings = storage_settings(kind, tmp_path, request)
    body = {"count": 6, "shard_size": 2, "seed": 3, "prefix": "victim"}
    with TestClient(create_app(settings)) as client:
        first = submit_and_wait(client, body)
    storage = open_storage(settings)
    base = first["location"].removeprefix(storage.location + "/").rstrip("/")
    shards = {i: storage.get_bytes(f"{base}/shard-{i:06d}.tar") for i in range(3)}
    for i in range(3):  # a folder below the job's holding shards of the same names
        storage.put_bytes(f"{base}/{'0' * 31}1/shard-{i:06d}.tar", b"not the victim's shard")
    for name in ("manifest.json", "shard-000001.tar", "shard-000002.tar"):  # as if killed after shard 0
        remove_object(settings, f"{base}/{name}")
    with TestClient(create_app(settings)) as client:  # the start-up scan resumes it
        status = wait_for_job(lambda: client.get(first["url"]).json(), 120)
    assert status["state"] == "succeeded" and status["images_done"] == 6, status
    assert {i: storage.get_bytes(f"{base}/shard-{i:06d}.tar") for i in range(3)} == shards


# ---- defect 5: the manifest claims only shards that are there; /readyz creates no bucket --------------


def test_a_shard_gone_before_the_manifest_is_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect 5: shards deleted mid-job were still listed in the manifest of a `succeeded` job. Here a
    shard disappears just before the manifest is written: the job makes it again, then succeeds."""
    import service.work

    write_manifest, removed = service.work.write_manifest, []

    def remove_a_shard_first(storage, paths, *args):
        if not removed:
            removed.append(paths.key("shard-000001.tar"))
            storage.delete(removed[0])
        return write_manifest(storage, paths, *args)

    monkeypatch.setattr(service.work, "write_manifest", remove_a_shard_first)
    with TestClient(create_app(gateway_settings(tmp_path / "data"))) as client:
        status = submit_and_wait(client, {"count": 9, "shard_size": 3, "seed": 4})
        manifest = client.get(f"/v1/jobs/{status['id']}/manifest").json()
    assert removed and status["state"] == "succeeded", status
    folder = Path(status["location"])
    assert manifest["images"] == 9 and len(manifest["shards"]) == 3
    for shard in manifest["shards"]:
        data = (folder / shard["name"]).read_bytes()
        assert len(data) == shard["bytes"] and hashlib.sha256(data).hexdigest() == shard["sha256"]
    assert len(samples([(folder / s["name"]).read_bytes() for s in manifest["shards"]])) == 9


@pytest.mark.slow
def test_readyz_never_creates_the_bucket(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Defect 5: the unauthenticated /readyz re-created a deleted bucket, and a job then wrote into it."""
    from minio import Minio

    settings = storage_settings("s3", tmp_path, request)
    s3 = Minio(endpoint=settings.s3_endpoint, access_key="any", secret_key="anything", secure=False)
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").status_code == 200
        s3.remove_bucket(bucket_name=settings.s3_bucket)
        for _ in range(3):
            response = client.get("/readyz")
            assert response.status_code == 503 and "storage" in response.json()["detail"]
        assert not s3.bucket_exists(bucket_name=settings.s3_bucket)


# ---- defect 8: one broken job does not stop the start-up scan -----------------------------------------


def test_a_corrupt_manifest_fails_its_job_and_the_scan_goes_on(tmp_path: Path) -> None:
    """Defect 8: one truncated manifest.json stopped the start-up scan: every lookup answered 503 and
    the unfinished job never resumed."""
    data = tmp_path / "data"
    body = {"count": 4, "shard_size": 2, "seed": 6}
    with TestClient(create_app(gateway_settings(data))) as client:
        broken, unfinished = submit_and_wait(client, body), submit_and_wait(client, body)
    broken_manifest = Path(broken["location"]) / "manifest.json"
    broken_manifest.write_bytes(broken_manifest.read_bytes()[:40])  # truncated
    (Path(unfinished["location"]) / "manifest.json").unlink()
    with TestClient(create_app(gateway_settings(data))) as client:
        status = client.get(broken["url"])
        assert status.status_code == 200, status.text
        assert status.json()["state"] == "failed" and "manifest.json" in status.json()["error"]
        assert wait_for_job(lambda: client.get(unfinished["url"]).json())["state"] == "succeeded"
        assert len(client.get("/v1/jobs").json()["jobs"]) == 2
        resumed = client.post(f"/v1/jobs/{broken['id']}/resume")  # checks the shards, writes it again
        assert resumed.status_code == 202, resumed.text
        assert wait_for_job(lambda: client.get(broken["url"]).json())["state"] == "succeeded"
        assert client.get(f"/v1/jobs/{broken['id']}/manifest").json()["images"] == 4


def test_a_lookup_during_the_start_up_scan_never_sees_a_finished_job_as_queued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scan published each job before reading its manifest, so a lookup in between saw a
    succeeded (or broken) job as "queued" (seen once in CI as a failure of the test above)."""
    from service.storage.local import LocalStorage

    data = tmp_path / "data"
    body = {"count": 2, "shard_size": 2, "seed": 8}
    with TestClient(create_app(gateway_settings(data))) as client:
        done = submit_and_wait(client, body)
    read = LocalStorage.get_bytes

    def slow_manifest(self: LocalStorage, key: str) -> bytes | None:
        if key.endswith("manifest.json"):
            time.sleep(1.0)  # the scan is between publishing the job and knowing its state
        return read(self, key)

    monkeypatch.setattr(LocalStorage, "get_bytes", slow_manifest)
    with TestClient(create_app(gateway_settings(data))) as client:
        status = client.get(done["url"])
        assert status.status_code == 200, status.text
        assert status.json()["state"] == "succeeded"


# ---- defect 10: listing jobs with storage unreachable -------------------------------------------------


def test_listing_jobs_with_storage_unreachable_is_a_503(tmp_path: Path) -> None:
    """Defect 10: GET /v1/jobs waited 10 s for the start-up scan, then answered an empty 200."""
    (tmp_path / "a-file").write_text("storage cannot live under a file")
    with TestClient(create_app(gateway_settings(tmp_path / "a-file" / "data"))) as client:
        for path in ("/v1/jobs", f"/v1/jobs/{'0' * 32}"):
            response = client.get(path)
            assert response.status_code == 503, response.text
            assert response.headers["content-type"] == "application/problem+json"
            assert "cannot be read" in response.json()["detail"]
        assert client.get("/readyz").status_code == 503


# ---- defect 9: a missing shard is a problem before any header ----------------------------------------


@pytest.mark.parametrize("kind", ["local", pytest.param("s3", marks=pytest.mark.slow)])
def test_a_shard_missing_from_storage_is_a_404_not_an_empty_200(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Defect 9: a committed shard whose object was gone streamed as 200 with a content-length, then 0
    bytes."""
    settings = storage_settings(kind, tmp_path, request)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        status = submit_and_wait(client, {"count": 4, "shard_size": 2, "seed": 1, "prefix": "gone"})
        assert status["state"] == "succeeded", status
        kept = client.get(f"/v1/jobs/{status['id']}/shards/0")
        assert kept.status_code == 200 and len(kept.content) == int(kept.headers["content-length"])
        remove_object(settings, f"gone/{status['id']}/shard-000001.tar")
        response = client.get(f"/v1/jobs/{status['id']}/shards/1")
    assert response.status_code == 404, (response.status_code, response.headers, response.content[:200])
    assert response.headers["content-type"] == "application/problem+json"
    assert "gone from storage" in response.json()["detail"]


# ---- defect 11: local storage cleans what killed writes left ------------------------------------------


def test_partial_files_of_killed_writes_are_removed_at_start_up(tmp_path: Path) -> None:
    """Defect 11: every kill left `.partial-*` files in the local storage folder, for good."""
    data = tmp_path / "data"
    with TestClient(create_app(gateway_settings(data))) as client:
        status = submit_and_wait(client, {"count": 2, "seed": 1})
    folder = Path(status["location"])
    leftovers = [folder / ".partial-0123abcd-shard-000001.tar", data / ".partial-4567cdef-job.json"]
    for path in leftovers:
        path.write_bytes(b"half a write")
    with TestClient(create_app(gateway_settings(data))) as client:
        assert client.get("/v1/jobs").status_code == 200  # the start-up scan has run
    assert not any(path.exists() for path in leftovers)
    assert sorted(p.name for p in folder.iterdir()) == ["job.json", "manifest.json", "shard-000000.tar"]


# ---- defect 6: readiness probes cannot starve the gateway ---------------------------------------------


@pytest.mark.slow
def test_probes_during_a_storage_stall_leave_healthz_answering(tiny_store: Path, tmp_path: Path) -> None:
    """Defect 6: /readyz waited on S3 in a request thread (60 s x 3 tries); 45 of them during a storage
    stall filled the pool and /healthz timed out. Here "S3" is a socket that takes connections and never
    answers."""
    import socket
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from tests.servers import gateway

    with socket.socket() as stalled:
        stalled.bind(("127.0.0.1", 0))
        stalled.listen(256)
        endpoint = f"127.0.0.1:{stalled.getsockname()[1]}"
        env = {"THORAX_MODEL_STORE": str(tiny_store), "THORAX_S3_ENDPOINT": endpoint,
               "THORAX_S3_ACCESS_KEY": "any", "THORAX_S3_SECRET_KEY": "anything"}  # fmt: skip
        with gateway(env, tmp_path, ready="/healthz") as (url, _), ThreadPoolExecutor(45) as pool:
            probes = [pool.submit(httpx.get, f"{url}/readyz", timeout=60) for _ in range(45)]
            for _ in range(5):  # a generous bound: it answers at once, from the event loop
                assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
            answers = [probe.result() for probe in probes]
    assert {answer.status_code for answer in answers} == {503}
    assert all(a.headers["content-type"] == "application/problem+json" for a in answers)
    assert all("storage" in answer.json()["detail"] for answer in answers)


# ---- defect 7: per-image label rows stay in storage, bounded as stored -------------------------------


def test_label_rows_stay_in_storage_and_the_job_still_uses_them(tmp_path: Path) -> None:
    """Defect 7: every job stayed in memory with its per-image label rows (8 cancelled requests of 130,000
    rows took the gateway from 132 MB to 1,146 MB). The gateway keeps the job without them; the run reads
    them from job.json, and every image still gets its own row."""
    import json

    from thorax.labels import NIH_LABELS

    names = sorted(NIH_LABELS)
    rows = [{names[i % len(names)]: 1.0} for i in range(12)]
    with TestClient(create_app(gateway_settings(tmp_path / "data"))) as client:
        status = submit_and_wait(client, {"count": 12, "shard_size": 5, "seed": 3, "labels": rows})
        kept = client.app.state.jobs.jobs[status["id"]]
        manifest = client.get(f"/v1/jobs/{status['id']}/manifest").json()
    assert status["state"] == "succeeded", status
    assert kept.spec.label_rows is None  # in memory: the summary only
    folder = Path(status["location"])
    assert len(json.loads((folder / "job.json").read_bytes())["label_rows"]) == 12  # in storage: all
    images = samples([p.read_bytes() for p in sorted(folder.glob("shard-*.tar"))])
    for i, key in enumerate(sorted(images)):
        labels = json.loads(images[key]["json"])["labels"]
        assert {name for name, value in labels.items() if value == 1.0} == {names[i % len(names)]}
    assert sum(manifest["label_counts"].values()) == 12


def test_label_rows_are_bounded_by_their_stored_size(tmp_path: Path) -> None:
    """Defect 7: MAX_REQUEST_BYTES bounded the request as sent (rows of `0,`), while the stored spec was
    over four times larger. The bound now holds for the rows as recorded, and the refusal names the field."""
    import json

    limit, width = 64 * 1024, 14
    count = limit // (2 * width + 2) - 100  # "[0,...,0]," per row: the body fits under the limit
    body = json.dumps({"count": count, "labels": [[0] * width] * count}, separators=(",", ":"))
    assert len(body) < limit
    with TestClient(create_app(gateway_settings(tmp_path / "data", max_request_bytes=limit))) as client:
        response = client.post("/generate", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 413, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["errors"][0]["field"] == "labels"
        assert client.get("/v1/jobs").json()["jobs"] == []


# ---- defect 14: strict types, and the OpenAPI says what the gateway takes ------------------------------


@pytest.mark.parametrize(
    "body, field",
    [
        ({"count": "5"}, "count"),
        ({"count": True}, "count"),
        ({"count": 5.0}, "count"),
        ({"count": 1, "shard_size": "2"}, "shard_size"),
        ({"count": 1, "seed": True}, "seed"),
        ({"count": 1, "labels": {"Edema": "0.5"}}, "labels.Edema"),
        ({"count": 1, "labels": {"Edema": True}}, "labels.Edema"),
        ({"count": 1, "labels": {"prior": "model", "fixed": {"Edema": True}}}, "labels.fixed.Edema"),
        ({"count": 1, "labels": {"": 1}}, 'labels.""'),
        ({"count": 1, "prefix": "équipe"}, "prefix"),
        ({"count": 1, "prefix": " padded"}, "prefix"),
    ],
)
def test_loose_types_and_names_are_refused(client_data: TestClient, body: dict, field: str) -> None:
    """Defect 14: `count: "5"`, `count: true` and label values `"0.5"` and `true` were taken."""
    response = client_data.post("/generate", json=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert field in [e["field"] for e in response.json()["errors"]], response.json()
    assert client_data.get("/v1/jobs").json()["jobs"] == []


@pytest.fixture
def client_data(tmp_path: Path):
    with TestClient(create_app(gateway_settings(tmp_path / "data"))) as client:
        yield client


def test_the_openapi_says_what_prefix_and_label_names_take(client_data: TestClient) -> None:
    """Defect 14: the schema allowed a non-ASCII prefix and a label name "", which the gateway refuses."""
    import re

    schemas = client_data.get("/openapi.json").json()["components"]["schemas"]
    prefix = schemas["JobRequest"]["properties"]["prefix"]
    assert not re.fullmatch(prefix["pattern"], "équipe") and re.fullmatch(prefix["pattern"], "team/a-1")
    assert schemas["JobRequest"]["properties"]["count"]["type"] == "integer"
    names = schemas["LabelPrior-Input"]["properties"]["fixed"]["propertyNames"]
    assert names["minLength"] == 1


def test_405_names_the_allowed_methods(client_data: TestClient) -> None:
    """Defect 14: 405 answers carried no Allow header."""
    response = client_data.delete("/v1/jobs")
    assert response.status_code == 405 and response.headers["content-type"] == "application/problem+json"
    assert set(response.headers["allow"].split(", ")) == {"GET", "POST"}
    assert client_data.put("/healthz").headers["allow"] == "GET"


def test_a_body_that_is_not_utf8_is_a_documented_422(client_data: TestClient) -> None:
    """Defect 14: a body that is not valid UTF-8 gave an undocumented 400."""
    headers = {"content-type": "application/json"}
    response = client_data.post("/generate", content=b'{"count": 1, "prefix": "\xff"}', headers=headers)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["field"] == "body"
    documented = client_data.get("/openapi.json").json()["paths"]["/generate"]["post"]["responses"]
    assert "422" in documented


# ---- defect 12: a key sees and acts only on its own jobs; admin keys on all -------------------------


def test_a_key_sees_and_acts_only_on_its_own_jobs(tmp_path: Path) -> None:
    """Defect 12: any API key could list, read, download and cancel any other key's jobs."""
    import json

    from service.access import key_id

    alice, bob, ops = ({"X-API-Key": key} for key in ("alice-key", "bob-key", "ops-key"))
    keys = "alice-key, bob-key, admin:ops-key"
    with TestClient(create_app(gateway_settings(tmp_path / "data", api_keys=keys))) as client:
        created = client.post("/generate", json={"count": 2, "shard_size": 1, "seed": 1}, headers=alice)
        assert created.status_code == 202, created.text
        job = created.json()
        status = wait_for_job(lambda: client.get(job["url"], headers=alice).json())
        assert status["state"] == "succeeded"
        base = f"/v1/jobs/{job['id']}"
        for method, path in [("get", base), ("get", f"{base}/manifest"), ("get", f"{base}/shards"),
                             ("get", f"{base}/shards/0"), ("delete", base),
                             ("post", f"{base}/resume")]:  # fmt: skip
            response = getattr(client, method)(path, headers=bob)
            assert response.status_code == 404, (method, path, response.text)
            assert response.headers["content-type"] == "application/problem+json"
        assert client.get("/v1/jobs", headers=bob).json()["jobs"] == []
        assert [j["id"] for j in client.get("/v1/jobs", headers=alice).json()["jobs"]] == [job["id"]]
        assert [j["id"] for j in client.get("/v1/jobs", headers=ops).json()["jobs"]] == [job["id"]]
        assert client.get(f"{base}/shards/0", headers=ops).status_code == 200
        assert client.get(f"{base}/shards/0", headers=alice).status_code == 200
    recorded = (Path(status["location"]) / "job.json").read_text()
    assert json.loads(recorded)["owner"] == key_id("alice-key") and "alice-key" not in recorded
    with TestClient(create_app(gateway_settings(tmp_path / "data", api_keys=keys))) as client:
        assert client.get(base, headers=bob).status_code == 404  # also for jobs read back from storage
        assert client.get(base, headers=alice).json()["state"] == "succeeded"


# ---- defect 13: the docs are behind the keys, as the README says; unauthenticated answers name nothing --


def test_docs_need_a_key_and_unauthenticated_answers_show_no_internals(tmp_path: Path) -> None:
    """Defect 13: with keys configured, /docs, /redoc and /openapi.json answered without one, against the
    README ("every route but /healthz and /readyz needs a key"); /readyz showed the storage folder."""
    data = tmp_path / "data"
    with TestClient(create_app(gateway_settings(data, api_keys="k1"))) as client:
        for path in ("/docs", "/redoc", "/openapi.json"):
            refused = client.get(path)
            assert refused.status_code == 401, path
            assert refused.headers["content-type"] == "application/problem+json"
            assert client.get(path, headers={"X-API-Key": "k1"}).status_code == 200, path
        assert "paths" in client.get("/openapi.json", headers={"X-API-Key": "k1"}).json()
        answers = [client.get(path) for path in ("/healthz", "/readyz", "/v1/jobs", "/nope", "/openapi.json")]
    for answer in answers:
        assert str(tmp_path) not in answer.text and "127.0.0.1" not in answer.text, answer.text
    with TestClient(create_app(gateway_settings(data))) as client:  # no keys: open, as before
        assert client.get("/docs").status_code == 200 and client.get("/openapi.json").status_code == 200


# ---- keep proving it: storage stopped, then killed and restarted, mid-job ----------------------------


@pytest.mark.slow
def test_a_job_survives_storage_stopped_then_killed_and_restarted(tiny_store: Path, tmp_path: Path) -> None:
    """Issue 12, "keep proving it": SeaweedFS is stopped (SIGSTOP, 10 s), then killed and started again on
    the same data, while a gateway process runs a job. The job ends with exactly `count` images, and
    /healthz answers throughout (bounded generously at 5 s a call, not measured)."""
    import os
    import signal
    import threading

    import httpx
    from minio import Minio

    from tests.servers import gateway, seaweedfs, seaweedfs_ports

    ports, weed_dir, procs = seaweedfs_ports(), tmp_path / "weed", []
    endpoint, bucket, count, shard_size = f"127.0.0.1:{ports['s3.port']}", "faults", 6000, 200
    env = {"THORAX_MODEL_STORE": str(tiny_store), "THORAX_S3_ENDPOINT": endpoint, "THORAX_S3_BUCKET": bucket,
           "THORAX_S3_ACCESS_KEY": "any", "THORAX_S3_SECRET_KEY": "anything", "THORAX_BATCH_SIZE": "2",
           "THORAX_ONNX_THREADS": "1", "THORAX_STORAGE_RETRY_SECONDS": "300"}  # fmt: skip
    health_failures: list[str] = []
    done = threading.Event()

    def watch_health(url: str) -> None:
        while not done.is_set():
            try:
                if httpx.get(f"{url}/healthz", timeout=5).status_code != 200:
                    health_failures.append("not 200")
            except httpx.HTTPError as exc:
                health_failures.append(repr(exc))
            done.wait(0.2)

    with seaweedfs(weed_dir, ports, started=procs):
        with gateway(env, tmp_path / "gw") as (url, _), httpx.Client(base_url=url, timeout=30) as client:
            watcher = threading.Thread(target=watch_health, args=(url,), daemon=True)
            watcher.start()
            created = client.post("/generate", json={"count": count, "shard_size": shard_size, "seed": 5})
            assert created.status_code == 202, created.text
            job = created.json()
            wait_until(lambda: client.get(job["url"]).json()["shards_done"] >= 1, 120, "a committed shard")
            os.killpg(procs[0].pid, signal.SIGSTOP)
            before = client.get(job["url"]).json()
            assert before["state"] == "running", "the job finished before the fault; make it larger"
            time.sleep(10)  # the stall itself, not an assertion
            os.killpg(procs[0].pid, signal.SIGCONT)
            os.killpg(procs[0].pid, signal.SIGKILL)
            procs[0].wait(timeout=30)
            with seaweedfs(weed_dir, ports):
                status = wait_for_job(lambda: client.get(job["url"]).json(), 300)
                s3 = Minio(endpoint=endpoint, access_key="any", secret_key="anything", secure=False)
                base = status["location"].removeprefix(f"s3://{bucket}/").rstrip("/")
                shards = []
                for i in range(count // shard_size):
                    response = s3.get_object(bucket_name=bucket, object_name=f"{base}/shard-{i:06d}.tar")
                    try:
                        shards.append(response.read())
                    finally:
                        response.close()
                        response.release_conn()
            done.set()
            watcher.join(10)
    assert status["state"] == "succeeded" and status["images_done"] == count, status
    keys = [key for data in shards for key in samples([data])]
    assert keys == [f"{i:09d}" for i in range(count)]
    assert health_failures == []
