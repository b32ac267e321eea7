"""The API behind the web console, in-process on the tiny model: the console's files, a model's figures,
the dry run of a job (and the SDK's), and reader studies: blinding, order, no going back, the timer,
results and CSV."""

from __future__ import annotations

import csv
import io
import json
import shutil
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from thoraxclient import Client, RequestError
from thoraxclient.schemas import JobEstimate

from service.app import create_app
from service.settings import Settings
from tests.gateway_helpers import wait_for_job
from thorax.reader_stats import fleiss_kappa

KEY = "console-key"


pytestmark = pytest.mark.usefixtures("tiny_store_env")  # every test here serves tiny/1


@pytest.fixture(scope="module")
def study_folder(tmp_path_factory, data_dir: Path) -> Path:
    """Eight real radiographs, as an operator's study folder (one in a subfolder)."""
    folder = tmp_path_factory.mktemp("study-images")
    for i, path in enumerate(sorted((data_dir / "images").glob("*.png"))[:8]):
        target = folder / ("more" if i == 7 else "") / path.name
        target.parent.mkdir(exist_ok=True)
        shutil.copy(path, target)
    return folder


@pytest.fixture
def client(tmp_path: Path, study_folder: Path):
    settings = Settings(
        storage_dir=tmp_path / "data", batch_size=8, onnx_threads=1, study_images=study_folder
    )
    with TestClient(create_app(settings)) as c:
        c.storage_dir = tmp_path / "data"
        yield c


def test_the_console_is_served_without_a_key_and_the_api_still_needs_one(tmp_path: Path) -> None:
    with TestClient(create_app(Settings(storage_dir=tmp_path, api_keys=KEY))) as c:
        page = c.get("/console/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert 'src="console.js"' in page.text and "http" not in page.text.split("<body")[0]  # no CDN
        assert c.get("/console/console.js").status_code == 200
        assert c.get("/console/read.html").status_code == 200
        assert c.get("/v1/models").status_code == 401
        assert c.get("/v1/models", headers={"X-API-Key": KEY}).status_code == 200


def test_a_model_lists_and_serves_its_figures_checked_against_its_sums(client: TestClient) -> None:
    figures = client.get("/v1/models/tiny/1/files").json()["figures"]
    assert "samples.png" in figures and all(f.endswith((".png", ".gif")) for f in figures)
    picture = client.get("/v1/models/tiny/1/files/samples.png")
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(picture.content)).format == "PNG"
    for missing in ("generator.onnx", "model_card.json", "nothing.png"):
        response = client.get(f"/v1/models/tiny/1/files/{missing}")
        assert response.status_code == 404 and missing in response.json()["detail"]
    assert client.get("/v1/models/nope/1/files").status_code == 404


def test_a_dry_run_estimates_and_starts_nothing(client: TestClient) -> None:
    body = {"count": 50, "shard_size": 20, "labels": {"Cardiomegaly": 1}, "seed": 3}
    response = client.post("/v1/jobs?dry_run=true", json=body)
    assert response.status_code == 200, response.text
    estimate = JobEstimate.model_validate(response.json())
    assert (estimate.count, estimate.shards_total, estimate.resolution, estimate.format) == (50, 3, 16, "png")
    assert estimate.images_per_second > 0 and estimate.seconds == pytest.approx(
        50 / estimate.images_per_second
    )
    assert client.get("/v1/jobs").json()["jobs"] == []
    assert not any(client.storage_dir.rglob("job.json"))

    # the estimate's bytes against the job's: each sample's members differ only in the PNG's size
    status = client.post("/v1/jobs", json=body).json()
    assert wait_for_job(lambda: client.get(status["url"]).json())["state"] == "succeeded"
    folder = Path(status["location"])
    made = sum(p.stat().st_size for p in folder.glob("shard-*.tar"))
    assert abs(estimate.bytes - made) <= 0.2 * made


@pytest.mark.parametrize(
    "body, field",
    [
        ({"count": 5, "labels": {"NotALabel": 1}}, "labels.NotALabel"),
        ({"count": 5, "resolution": 64}, "resolution"),
        ({"count": 5, "shard_size": 10**6}, "shard_size"),
        ({"count": 5, "prefix": "a/../b"}, "prefix"),
        ({"count": 5, "model": "nope"}, "model"),
        ({"count": "5"}, "count"),
    ],
)
def test_a_dry_run_answers_the_errors_of_a_submission(client: TestClient, body: dict, field: str) -> None:
    dry = client.post("/v1/jobs?dry_run=true", json=body)
    real = client.post("/v1/jobs", json=body)
    assert dry.status_code == real.status_code and dry.status_code in (422, 429)
    strip = lambda p: {k: v for k, v in p.items() if k not in ("request_id",)}  # noqa: E731
    assert strip(dry.json()) == strip(real.json())
    assert [e["field"] for e in dry.json()["errors"]] == [field]


def test_the_sdk_dry_run(client: TestClient) -> None:
    transport = httpx.MockTransport(lambda r: _forward(client, r))  # the real app behind the SDK
    with Client("http://gateway", transport=transport) as sdk:
        estimate = sdk.dry_run(12, {"Mass": 1}, shard_size=5)
        assert isinstance(estimate, JobEstimate) and estimate.shards_total == 3 and estimate.bytes > 0
        with pytest.raises(RequestError) as caught:
            sdk.dry_run(3, {"Mass": 1}, resolution=1024)
        assert "resolution" in str(caught.value)
        assert sdk.jobs() == []


def _forward(client: TestClient, request: httpx.Request) -> httpx.Response:
    response = client.request(request.method, request.url.raw_path.decode(), content=request.content,
                              headers=dict(request.headers))  # fmt: skip
    return httpx.Response(response.status_code, headers=response.headers, content=response.content)


# ---- reader studies --------------------------------------------------------------------------------

STUDY = {
    "name": "pilot",
    "resolutions": [16, 8],
    "per_block": 2,
    "seconds_per_image": 30,
    "readers": [{"name": "ana", "group": "radiologists"}, {"name": "ben", "group": "engineers"}],
    "seed": 4,
}


def _truth(client: TestClient, study_id: str) -> list[str]:
    record = json.loads(next(client.storage_dir.rglob(f"{study_id}/study.json")).read_text())
    return [item["kind"] for block in record["blocks"] for item in block["items"]]


def _read(client: TestClient, token: str, answers: list[str | None]) -> list[bytes]:
    """Take the study as a reader: fetch each image, then answer it."""
    images = []
    for position, answer in enumerate(answers):
        state = client.get(f"/v1/read/{token}").json()
        assert state["position"] == position and not state["done"]
        image = client.get(state["image_url"])
        assert image.status_code == 200 and image.headers["cache-control"] == "no-store"
        images.append(image.content)
        body = {"position": position, "image": state["image"], "answer": answer}
        assert client.post(f"/v1/read/{token}/answers", json=body).status_code == 200
    return images


def test_a_study_blinds_orders_and_scores_its_readers(client: TestClient) -> None:
    created = client.post("/v1/studies", json=STUDY)
    assert created.status_code == 201, created.text
    study = created.json()
    assert study["resolutions"] == [8, 16] and study["images_per_reader"] == 8
    assert created.headers["location"] == study["url"]
    tokens = {r["name"]: r["token"] for r in study["readers"]}
    assert all(r["url"].endswith("/console/read.html#" + r["token"]) for r in study["readers"])
    assert all(r["token"] is None for r in client.get(study["url"]).json()["readers"])  # shown once
    stored = next(client.storage_dir.rglob(f"{study['id']}/study.json")).read_text()
    assert not any(token in stored for token in tokens.values())  # only hashes are kept
    truth = _truth(client, study["id"])
    assert sorted(truth[:4]) == sorted(truth[4:]) == ["generated", "generated", "real", "real"]

    # ana is right on everything but the last image (left to time out: None); ben calls everything real
    ana = [*truth[:7], None]
    ben = ["real"] * 8
    images = _read(client, tokens["ana"], ana)
    _read(client, tokens["ben"], ben)

    # blinding: every image of a block has the same size and encoding, and no metadata
    for n, data in enumerate(images):
        image = Image.open(io.BytesIO(data))
        assert (image.format, image.mode, image.size) == ("PNG", "L", (8, 8) if n < 4 else (16, 16))
        assert set(image.info) <= {"dpi"} and b"tEXt" not in data and b"iTXt" not in data

    done = client.get(f"/v1/read/{tokens['ana']}").json()
    assert done["done"] and done["image"] is None
    again = client.post(
        f"/v1/read/{tokens['ana']}/answers", json={"position": 0, "image": "x", "answer": "real"}
    )
    assert again.status_code == 409

    results = client.get(f"{study['url']}/results").json()["rows"]
    overall = {(r["kind"], r["name"]): r for r in results if r["resolution"] is None}
    assert overall[("reader", "ana")]["accuracy"] == 7 / 8 and overall[("reader", "ben")]["accuracy"] == 0.5
    assert (
        overall[("reader", "ben")]["sensitivity"] == 0.0 and overall[("reader", "ben")]["specificity"] == 1.0
    )
    assert overall[("reader", "ana")]["answered"] == 7
    everyone = overall[("group", "all readers")]
    assert everyone["accuracy"] == pytest.approx((7 / 8 + 0.5) / 2) and everyone["kappa_images"] == 7
    # kappa by hand: on the 7 images both answered, they agree on the real ones only
    table = [[1, 1] if t == "generated" else [0, 2] for t in truth[:7]]  # [generated, real] calls
    assert everyone["kappa"] == pytest.approx(fleiss_kappa(table))
    per_block = [r for r in results if r["kind"] == "reader" and r["name"] == "ben" and r["resolution"] == 8]
    assert per_block[0]["images"] == 4

    answers = list(csv.DictReader(io.StringIO(client.get(f"{study['url']}/answers.csv").text)))
    assert len(answers) == 16 and {a["truth"] for a in answers} == {"generated", "real"}
    assert [a["answer"] for a in answers if a["reader"] == "ana"][-1] == ""
    table_csv = client.get(f"{study['url']}/results.csv")
    assert table_csv.headers["content-type"].startswith("text/csv")
    assert len(list(csv.DictReader(io.StringIO(table_csv.text)))) == len(results)


def test_a_reader_cannot_go_back_look_ahead_or_answer_late(client: TestClient) -> None:
    study = client.post("/v1/studies", json={**STUDY, "seconds_per_image": 0.1}).json()
    token = study["readers"][0]["token"]
    state = client.get(f"/v1/read/{token}").json()
    body = {"position": 0, "image": state["image"], "answer": "real"}
    assert client.post(f"/v1/read/{token}/answers", json=body).status_code == 409  # not shown yet
    assert client.get(state["image_url"]).status_code == 200
    record = json.loads(next(client.storage_dir.rglob(f"{study['id']}/study.json")).read_text())
    later = record["blocks"][0]["items"][1]["name"]
    assert client.get(state["image_url"].replace(state["image"], later)).status_code == 404  # no peeking

    time.sleep(3.3)  # past the 0.1 s limit and the 3 s grace: the answer is recorded as timed out
    assert client.post(f"/v1/read/{token}/answers", json=body).json()["position"] == 1
    assert client.post(f"/v1/read/{token}/answers", json=body).status_code == 409  # closed
    assert client.get(state["image_url"]).status_code == 404  # no going back to the first image
    answers = list(csv.DictReader(io.StringIO(client.get(f"{study['url']}/answers.csv").text)))
    assert answers[0]["answer"] == "" and answers[0]["late"] == "1"
    assert client.get("/v1/read/not-a-token").status_code == 404


@pytest.mark.parametrize(
    "change, field",
    [
        ({"resolutions": [32]}, "resolutions.0"),
        ({"resolutions": [8, 8]}, "resolutions"),
        ({"per_block": 5}, "per_block"),  # 2 blocks x 5 real images need 10; the folder has 8
        ({"readers": [{"name": "a"}, {"name": "a"}]}, "readers.1.name"),
        ({"model": "nope"}, "model"),
        ({"labels": {"Nope": 1}}, "labels.Nope"),
        ({"seconds_per_image": 0}, "seconds_per_image"),
    ],
)
def test_a_bad_study_names_its_field(client: TestClient, change: dict, field: str) -> None:
    response = client.post("/v1/studies", json={**STUDY, **change})
    assert response.status_code == 422, response.text
    assert field in [e["field"] for e in response.json()["errors"]]


def test_studies_need_the_folder_setting_and_stay_with_their_key(tmp_path: Path, study_folder: Path) -> None:
    with TestClient(create_app(Settings(storage_dir=tmp_path / "a"))) as c:
        response = c.post("/v1/studies", json=STUDY)
        assert response.status_code == 409 and "THORAX_STUDY_IMAGES" in response.json()["detail"]
    settings = Settings(
        storage_dir=tmp_path / "b", study_images=study_folder, api_keys=f"one,two,admin:{KEY}"
    )
    with TestClient(create_app(settings)) as c:
        study = c.post("/v1/studies", json=STUDY, headers={"X-API-Key": "one"}).json()
        assert c.get(study["url"], headers={"X-API-Key": "two"}).status_code == 404
        assert c.get("/v1/studies", headers={"X-API-Key": "two"}).json()["studies"] == []
        assert c.get(study["url"], headers={"X-API-Key": KEY}).status_code == 200
        token = study["readers"][0]["token"]
        assert c.get(f"/v1/read/{token}").status_code == 200  # a reader needs no API key
    with TestClient(create_app(settings)) as c:  # a new gateway finds the study in storage
        assert c.get(f"/v1/read/{token}").json()["study"] == "pilot"
