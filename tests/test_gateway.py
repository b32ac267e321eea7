"""The gateway in-process (FastAPI's TestClient) on the tiny exported model, storing to a local folder:
jobs, shards, manifests, DICOM validity, determinism, resume, errors, limits and keys."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.settings import Settings
from tests.gateway_helpers import TERMINAL, read_with_webdataset, samples, sha256, wait_for_job, wait_until
from thorax.labels import NIH_LABELS
from thorax.pictures import difference_overlay

pytestmark = pytest.mark.usefixtures("tiny_store_env")  # every test here serves tiny/1


def settings(tmp: Path, **overrides) -> Settings:
    return Settings(**{"storage_dir": tmp, "batch_size": 8, "onnx_threads": 1, **overrides})


@pytest.fixture
def client(tmp_path: Path):
    with TestClient(create_app(settings(tmp_path / "data"))) as c:
        c.storage_dir = tmp_path / "data"
        yield c


def run_job(client: TestClient, body: dict, timeout: float = 60.0) -> dict:
    response = client.post("/generate", json=body)
    assert response.status_code == 202, response.text
    assert response.headers["location"] == response.json()["url"]
    status = wait_for_job(lambda: client.get(response.json()["url"]).json(), timeout)
    assert status["state"] == "succeeded", status
    return status


def job_folder(client: TestClient, status: dict) -> Path:
    return Path(status["location"])


def shard_bytes(folder: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(folder.glob("shard-*.tar"))]


def test_png_job_writes_shards_a_manifest_and_labels(client: TestClient) -> None:
    body = {"count": 25, "shard_size": 10, "seed": 5, "labels": {"Cardiomegaly": 1, "effusion": 0.5}}
    status = run_job(client, body)
    assert (status["images_done"], status["shards_done"], status["shards_total"]) == (25, 3, 3)
    folder = job_folder(client, status)
    assert sorted(p.name for p in folder.iterdir()) == [
        "job.json", "manifest.json", "shard-000000.tar", "shard-000001.tar", "shard-000002.tar",
    ]  # fmt: skip

    rows = read_with_webdataset(sorted(folder.glob("shard-*.tar")))
    assert [r["key"] for r in rows] == [f"{i:09d}" for i in range(25)]
    for i, row in enumerate(rows):
        image = Image.open(io.BytesIO(row["image"]))
        image.load()
        assert (image.format, image.mode, image.size) == ("PNG", "L", (16, 16))
        meta = row["json"]
        assert (meta["index"], meta["seed"]) == (i, 5)
        assert meta["model"]["name"] == "tiny" and meta["model"]["version"] == "1"
        assert meta["labels"]["Cardiomegaly"] == 1.0 and meta["labels"]["Effusion"] == 0.5
        assert sum(meta["labels"].values()) == 1.5 and list(meta["labels"]) == sorted(NIH_LABELS)

    manifest = client.get(status["manifest_url"]).json()
    assert manifest == json.loads((folder / "manifest.json").read_text())
    assert manifest["images"] == 25 and manifest["spec"]["seed"] == 5
    assert manifest["model"]["card_sha256"] == rows[0]["json"]["model"]["card_sha256"]
    for shard in manifest["shards"]:
        assert shard["sha256"] == sha256((folder / shard["name"]).read_bytes())
    assert [s["images"] for s in manifest["shards"]] == [10, 10, 5]
    assert manifest["label_counts"]["Cardiomegaly"] == 25 and manifest["label_counts"]["Effusion"] == 25
    assert manifest["label_counts"]["Mass"] == 0


def test_an_omitted_seed_is_chosen_recorded_and_listed(client: TestClient) -> None:
    status = run_job(client, {"count": 2, "labels": [0.0] * 14})
    assert isinstance(status["seed"], int) and 0 <= status["seed"] < 2**63
    folder = job_folder(client, status)
    assert json.loads((folder / "job.json").read_text())["seed"] == status["seed"]
    assert all(json.loads(v["json"])["seed"] == status["seed"] for v in samples(shard_bytes(folder)).values())
    listed = client.get("/v1/jobs").json()["jobs"]
    assert [j["id"] for j in listed] == [status["id"]] and listed[0]["state"] == "succeeded"


def test_same_spec_gives_the_same_bytes_whatever_the_batching(tmp_path: Path, client: TestClient) -> None:
    body = {"count": 12, "shard_size": 5, "seed": 11, "labels": [[i / 12] + [0.0] * 13 for i in range(12)]}
    first = shard_bytes(job_folder(client, run_job(client, body)))
    again = shard_bytes(job_folder(client, run_job(client, body)))
    with TestClient(create_app(Settings(storage_dir=tmp_path / "other", batch_size=3))) as other:
        rebatched = shard_bytes(job_folder(other, run_job(other, body)))
    assert first == again == rebatched
    # the images do not depend on how the job is cut into shards either
    reshard = samples(shard_bytes(job_folder(client, run_job(client, {**body, "shard_size": 7}))))
    assert {k: v["png"] for k, v in samples(first).items()} == {k: v["png"] for k, v in reshard.items()}
    other_seed = samples(shard_bytes(job_folder(client, run_job(client, {**body, "seed": 12}))))
    assert samples(first)["000000000"]["png"] != other_seed["000000000"]["png"]


def test_dicom_shards_pass_dciodvfy_and_record_the_labels(client: TestClient, tmp_path: Path) -> None:
    dciodvfy = shutil.which("dciodvfy")
    assert dciodvfy, "dciodvfy is missing: apt-get install dicom3tools (scripts/install-dev.sh does)"
    status = run_job(client, {"count": 3, "format": "dicom", "seed": 2, "labels": {"Mass": 1}})
    by_key = samples(shard_bytes(job_folder(client, status)))
    assert sorted(by_key) == ["000000000", "000000001", "000000002"]
    uids = set()
    for key, members in by_key.items():
        path = tmp_path / f"{key}.dcm"
        path.write_bytes(members["dcm"])
        check = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=60)
        report = check.stdout + check.stderr
        assert check.returncode == 0 and "Error" not in report, report
        ds = pydicom.dcmread(path)
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
        assert ds.ConversionType == "SYN" and list(ds.ImageType) == ["DERIVED", "SECONDARY"]
        assert ds.PatientIdentityRemoved == "YES" and ds.BurnedInAnnotation == "NO"
        assert "Mass=1" in ds.ImageComments and "Mass" in ds.DerivationDescription
        assert (ds.Rows, ds.Columns) == (16, 16) and ds.pixel_array.dtype == np.uint8
        assert json.loads(members["json"])["labels"]["Mass"] == 1.0
        uids.add(ds.SOPInstanceUID)
    assert len(uids) == 3


def test_lower_resolution_is_the_area_average(client: TestClient) -> None:
    body = {"count": 4, "seed": 3, "shard_size": 4}
    full = samples(shard_bytes(job_folder(client, run_job(client, body))))
    half = samples(shard_bytes(job_folder(client, run_job(client, {**body, "resolution": 8}))))
    for key in full:
        big = np.asarray(Image.open(io.BytesIO(full[key]["png"])), np.float64)
        small = np.asarray(Image.open(io.BytesIO(half[key]["png"])), np.int16)
        assert small.shape == (8, 8)
        expected = big.reshape(8, 2, 8, 2).mean(axis=(1, 3))
        assert np.abs(small - expected).max() <= 1.0
        assert json.loads(half[key]["json"])["resolution"] == 8


def test_prior_labels_fix_named_labels_and_sample_the_rest(client: TestClient) -> None:
    body = {"count": 40, "seed": 9, "labels": {"prior": "model", "fixed": {"Mass": 1}}}
    first = samples(shard_bytes(job_folder(client, run_job(client, body))))
    rows = [json.loads(v["json"])["labels"] for v in first.values()]
    assert all(r["Mass"] == 1.0 for r in rows)
    assert len({tuple(sorted(r.items())) for r in rows}) > 1  # the others come from the prior's patterns
    again = samples(shard_bytes(job_folder(client, run_job(client, body))))
    assert rows == [json.loads(v["json"])["labels"] for v in again.values()]


@pytest.mark.parametrize(
    "body, field",
    [
        ({"count": 1, "labels": {"Cardiomegaly": 1.5}}, "labels.Cardiomegaly"),
        ({"count": 1, "labels": {"Cardiomegaly": -0.1}}, "labels.Cardiomegaly"),
        ({"count": 1, "labels": {"Heartache": 1}}, "labels.Heartache"),
        ({"count": 1, "labels": {"Mass": "high"}}, "labels.Mass"),
        ({"count": 1, "labels": [0.5] * 13}, "labels"),
        ({"count": 1, "labels": [0.0] * 13 + [2.0]}, "labels.13"),
        ({"count": 2, "labels": [[0.0] * 14]}, "labels"),
        ({"count": 2, "labels": [{"Mass": 1}, {"Nope": 1}]}, "labels.1.Nope"),
        ({"count": 1, "labels": {"prior": "model", "fixed": {"Nope": 1}}}, "labels.fixed.Nope"),
        ({"count": 1, "model": "no-such-model"}, "model"),
        ({"count": 1, "model": "tiny/9"}, "model"),
        ({"count": 1, "resolution": 32}, "resolution"),
        ({"count": 0}, "count"),
        ({"count": 1, "format": "jpeg"}, "format"),
        ({"count": 1, "seed": -1}, "seed"),
        ({"count": 1, "prefix": "../escape"}, "prefix"),
        ({"count": 1, "prefix": "/abs/path"}, "prefix"),
        ({"count": 1, "prefix": "a/./b"}, "prefix"),
        ({"count": 1, "surprise": True}, "surprise"),
        ({}, "count"),
    ],
)
def test_bad_input_is_a_problem_naming_the_field(client: TestClient, body: dict, field: str) -> None:
    response = client.post("/generate", json=body, headers={"X-Request-ID": "req-42"})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 422 and problem["request_id"] == "req-42"
    assert response.headers["x-request-id"] == "req-42"
    assert field in [e["field"] for e in problem["errors"]], problem
    assert set(problem) >= {"type", "title", "status", "detail", "instance"}
    assert not list(client.storage_dir.rglob("job.json"))  # nothing was started


def test_nan_and_malformed_json_are_problems(client: TestClient) -> None:
    headers = {"content-type": "application/json"}
    nan = client.post("/generate", content=b'{"count": 1, "labels": {"Edema": NaN}}', headers=headers)
    assert nan.status_code == 422 and nan.json()["errors"][0]["field"] == "labels.Edema"
    broken = client.post("/generate", content=b'{"count": 1,', headers=headers)
    assert broken.status_code == 422 and broken.headers["content-type"] == "application/problem+json"
    missing = client.get("/v1/jobs/nope")
    assert missing.status_code == 404 and missing.json()["request_id"] == missing.headers["x-request-id"]


def test_limits_answer_429_and_413(tmp_path: Path) -> None:
    limits = settings(tmp_path, max_count=50_000, max_active_jobs=1, max_request_bytes=2048)
    with TestClient(create_app(limits)) as client:
        too_many = client.post("/generate", json={"count": 50_001})
        assert too_many.status_code == 429 and too_many.json()["errors"][0]["field"] == "count"
        big = client.post("/generate", json={"count": 500, "labels": [[0.0] * 14] * 500})
        assert big.status_code == 413 and big.json()["status"] == 413
        first = client.post("/generate", json={"count": 50_000, "shard_size": 100})
        assert first.status_code == 202
        second = client.post("/generate", json={"count": 1})
        assert second.status_code == 429 and "limit" in second.json()["detail"]
        cancelled = client.delete(first.json()["url"])
        assert cancelled.status_code == 200
        status = wait_for_job(lambda: client.get(first.json()["url"]).json(), 60)
        assert status["state"] == "cancelled"
        folder = Path(status["location"])
        assert not (folder / "manifest.json").exists() and (folder / "cancelled.json").exists()
        assert client.post("/generate", json={"count": 1}).status_code == 202


def test_api_keys_guard_every_route_but_health(tmp_path: Path) -> None:
    with TestClient(create_app(settings(tmp_path, api_keys="k1, k2"))) as client:
        assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
        for method, path in [("get", "/v1/models"), ("get", "/v1/jobs"), ("get", "/metrics"),
                             ("post", "/generate"), ("post", "/v1/preview"),
                             ("post", "/v1/visualize")]:  # fmt: skip
            response = getattr(client, method)(path)
            assert response.status_code == 401, path
            assert response.headers["content-type"] == "application/problem+json"
        assert client.get("/v1/models", headers={"Authorization": "Bearer k2"}).status_code == 200
        assert client.get("/v1/models", headers={"X-API-Key": "k1"}).status_code == 200
        assert client.get("/v1/models", headers={"X-API-Key": "k3"}).status_code == 401


def test_models_preview_openapi_health_and_metrics(client: TestClient) -> None:
    models = client.get("/v1/models").json()["models"]
    assert [(m["ref"], m["default"], m["resolution"]) for m in models] == [("tiny/1", True, 16)]
    card = client.get("/v1/models/tiny").json()
    assert card["labels"]["names"] == list(NIH_LABELS) and client.get("/v1/models/tiny/1").json() == card
    assert client.get("/v1/models/nope").status_code == 404

    preview = client.post("/v1/preview", json={"count": 4, "seed": 1, "labels": {"Cardiomegaly": 1}})
    assert preview.status_code == 200 and preview.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(preview.content)).size == (33, 33)  # 2x2 grid of 16 px, 1 px gaps
    assert client.post("/v1/preview", json={"count": 17}).status_code == 429

    paths = client.get("/openapi.json").json()["paths"]
    for path in ["/generate", "/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/manifest", "/v1/models",
                 "/v1/models/{name}", "/v1/preview", "/v1/visualize", "/healthz", "/readyz",
                 "/metrics"]:  # fmt: skip
        assert path in paths, path
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["models"] == ["tiny/1"]

    status = run_job(client, {"count": 3, "seed": 1})
    text = client.get("/metrics").text
    assert 'thorax_images_generated_total{model="tiny/1"} 3.0' in text
    for name in ["thorax_inference_seconds", "thorax_encoding_seconds", "thorax_upload_seconds",
                 'thorax_jobs{state="succeeded"}', "thorax_queue_depth", "thorax_errors_total"]:  # fmt: skip
        assert name in text, name
    assert status["id"] not in text and "seed" not in text


def picture(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "PNG"
    return np.asarray(image)


def test_visualize_draws_transition_strips_of_one_latent(client: TestClient) -> None:
    body = {"kind": "transitions", "label": "cardiomegaly", "seed": 3}
    first = client.post("/v1/visualize", json=body)
    strip = picture(first)  # 4 tiles of 16 px, 2 px black around and between
    assert strip.shape == (16 + 4, 4 * 18 + 2) and strip.dtype == np.uint8
    assert first.headers["x-thorax-seed"] == "3"
    assert client.post("/v1/visualize", json=body).content == first.content
    assert client.post("/v1/visualize", json={**body, "seed": 4}).content != first.content
    tiles = [strip[2:18, 2 + 18 * i : 18 + 18 * i] for i in range(4)]
    assert any((tiles[0] != t).any() for t in tiles[1:])  # the label changes the image

    rows = picture(
        client.post(
            "/v1/visualize",
            json={
                "kind": "transitions",
                "labels": ["Mass", "pleural thickening"],
                "values": [0, 1],
                "resolution": 8,
            },
        )
    )
    assert rows.shape == (2 * 10 + 2, 2 * 10 + 2)
    np.testing.assert_array_equal(rows[2:10, 2:10], rows[12:20, 2:10])  # value 0: the same healthy image


def test_visualize_draws_difference_maps_beside_the_strip(client: TestClient) -> None:
    strip = picture(
        client.post("/v1/visualize", json={"kind": "transitions", "label": "Effusion", "seed": 3})
    )
    body = {"kind": "difference", "label": "EFFUSION", "seed": 3}
    response = client.post("/v1/visualize", json=body)
    maps = picture(response)  # healthy | diseased | overlay, 1 px black around each tile
    assert maps.shape == (18, 3 * 18, 3)
    assert client.post("/v1/visualize", json=body).content == response.content
    healthy, diseased, overlay = (maps[1:17, 1 + 18 * i : 17 + 18 * i] for i in range(3))
    assert (healthy[..., 0] == healthy[..., 2]).all() and (diseased[..., 0] == diseased[..., 1]).all()
    np.testing.assert_array_equal(healthy[..., 0], strip[2:18, 2:18])  # value 0 of the strip
    np.testing.assert_array_equal(diseased[..., 0], strip[2:18, 56:72])  # value 1 of the strip
    np.testing.assert_array_equal(overlay, difference_overlay(healthy[..., 0], diseased[..., 0]))

    several = picture(
        client.post("/v1/visualize", json={"kind": "difference", "labels": ["Mass", "Edema"], "value": 0.5})
    )
    assert several.shape == (2 * 18, 3 * 18, 3)
    np.testing.assert_array_equal(several[1:17, 1:17], several[19:35, 1:17])  # one healthy image
    nan_body = b'{"kind": "difference", "label": "Mass", "value": NaN}'
    nan = client.post("/v1/visualize", content=nan_body, headers={"content-type": "application/json"})
    assert nan.status_code == 422 and nan.json()["errors"][0]["field"] == "value"
    nothing = picture(client.post("/v1/visualize", json={"kind": "difference", "label": "Mass", "value": 0}))
    np.testing.assert_array_equal(
        nothing[:, 36:], nothing[:, :18]
    )  # no change: the overlay is the healthy grey


@pytest.mark.parametrize(
    "body, status, field",
    [
        ({"kind": "transitions", "label": "Covid"}, 422, "label"),
        ({"kind": "difference", "labels": ["Mass", "nope"]}, 422, "labels.1"),
        ({"kind": "transitions"}, 422, "label"),
        ({"kind": "transitions", "label": "Mass", "labels": ["Mass"]}, 422, "label"),
        ({"kind": "transitions", "labels": []}, 422, "labels"),
        ({"kind": "transitions", "label": "Mass", "values": [0, 1.5]}, 422, "values.1"),
        ({"kind": "transitions", "label": "Mass", "value": 1}, 422, "value"),
        ({"kind": "difference", "label": "Mass", "values": [1]}, 422, "values"),
        ({"kind": "difference", "label": "Mass", "value": -0.1}, 422, "value"),
        ({"kind": "difference", "label": "Mass", "value": True}, 422, "value"),
        ({"kind": "histogram", "label": "Mass"}, 422, "kind"),
        ({"label": "Mass"}, 422, "kind"),
        ({"kind": "difference", "label": "Mass", "resolution": 32}, 422, "resolution"),
        ({"kind": "difference", "label": "Mass", "seed": -1}, 422, "seed"),
        ({"kind": "difference", "label": "Mass", "colour": "red"}, 422, "colour"),
        ({"kind": "difference", "label": "Mass", "model": "no-such-model"}, 404, "model"),
        ({"kind": "difference", "label": "Mass", "model": "tiny/9"}, 404, "model"),
        ({"kind": "transitions", "labels": ["Mass", "Edema", "Hernia", "Nodule", "Mass"]}, 429, "labels"),
        ({"kind": "transitions", "label": "Mass", "values": [0.5] * 17}, 429, "values"),
    ],
)
def test_visualize_bad_input_is_a_problem_naming_the_field(
    client: TestClient, body: dict, status: int, field: str
) -> None:
    response = client.post("/v1/visualize", json=body, headers={"X-Request-ID": "req-7"})
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status and problem["request_id"] == "req-7"
    assert field in [e["field"] for e in problem["errors"]], problem


def test_a_restarted_gateway_resumes_unfinished_jobs(tmp_path: Path) -> None:
    data, count = tmp_path / "data", 6000
    with TestClient(create_app(settings(data, batch_size=2))) as client:
        job = client.post("/generate", json={"count": count, "shard_size": 200, "seed": 4}).json()

        def two_shards() -> dict | None:
            status = client.get(job["url"]).json()
            return status if status["shards_done"] >= 2 or status["state"] in TERMINAL else None

        progress = wait_until(two_shards, 60, "two committed shards")
        folder = Path(progress["location"])
        if progress["state"] == "running":  # progress reports a rate and the time left
            assert progress["images_per_second"] > 0 and progress["seconds_left"] >= 0
    committed = sorted(p.name for p in folder.glob("shard-*.tar"))
    if len(committed) == count // 200:
        pytest.skip("the job finished before the gateway stopped; nothing to resume")
    assert not (folder / "manifest.json").exists()
    with TestClient(create_app(settings(data))) as client:
        status = wait_for_job(lambda: client.get(job["url"]).json(), 120)
        assert status["state"] == "succeeded" and status["images_done"] == count
        manifest = client.get(status["manifest_url"]).json()
    keys = [k for shard in shard_bytes(folder) for k in samples([shard])]
    assert keys == [f"{i:09d}" for i in range(count)]
    assert manifest["images"] == count and len(manifest["shards"]) == count // 200
    for shard in manifest["shards"]:
        assert shard["sha256"] == sha256((folder / shard["name"]).read_bytes())


@pytest.mark.parametrize(
    "env, message",
    [
        ({"THORAX_BACKEND": "tensorflow"}, "THORAX_BACKEND"),
        ({"THORAX_DEFAULT_MODEL": "nope"}, "no model 'nope'"),
    ],
)
def test_thorax_serve_refuses_bad_settings_in_one_line(env: dict, message: str, tmp_path: Path) -> None:
    import os
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "thorax.cli", "serve", "--port", "1"],
        capture_output=True, text=True, timeout=60, env={**os.environ, **env}, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("thorax: error: ") and message in lines[0], lines
