"""thoraxclient's Client and AsyncClient: typed errors from problem answers (httpx.MockTransport), the
PNG reader, and the client against the gateway in-process (local folder: shards through the gateway's
shard route), while and after a job runs."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from thoraxclient import (
    AsyncClient,
    AuthenticationError,
    Client,
    IntegrityError,
    JobError,
    NotFoundError,
    RequestError,
    ServerError,
    TransportError,
)
from thoraxclient.resize import resize
from thoraxclient.schemas import ShardEntry
from thoraxclient.shards import decode_png

from service.app import create_app
from service.settings import Settings
from tests.gateway_helpers import sha256
from tests.in_process import InProcessTransport


def problem(status: int, title: str, detail: str, request_id: str = "rid-1") -> httpx.Response:
    body = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "request_id": request_id,
    }
    headers = {"x-request-id": request_id, "content-type": "application/problem+json"}
    return httpx.Response(status, json=body, headers=headers)


@pytest.mark.parametrize(
    "status, error",
    [(401, AuthenticationError), (404, NotFoundError), (422, RequestError), (503, ServerError)],
)
def test_errors_are_typed_and_carry_the_problem_and_request_id(status: int, error: type) -> None:
    transport = httpx.MockTransport(lambda request: problem(status, "Nope", "because", "abc123"))
    with Client("http://gw", transport=transport) as client, pytest.raises(error) as caught:
        client.job("j1")
    assert caught.value.status == status and caught.value.request_id == "abc123"
    assert caught.value.problem.detail == "because" and "abc123" in str(caught.value)


def test_an_unreachable_gateway_is_a_transport_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with Client("http://gw", transport=httpx.MockTransport(refuse)) as client, pytest.raises(TransportError):
        client.models()


def test_the_api_key_goes_to_the_gateway_only_and_shards_are_checked() -> None:
    seen: list[tuple[str, str | None]] = []
    data = b"shard bytes"

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers.get("authorization")))
        return httpx.Response(200, content=data)

    entry = ShardEntry(name="shard-000000.tar", sha256=sha256(data), bytes=len(data), images=1, first_index=0,
                       label_counts={}, url="http://s3.example/bucket/shard?X-Amz-Signature=x")  # fmt: skip
    with Client("http://gw", api_key="k", transport=httpx.MockTransport(handler)) as client:
        assert client.shard_bytes(entry) == data
        client.shard_bytes(entry.model_copy(update={"url": "http://gw/v1/jobs/j/shards/0"}))
        with pytest.raises(IntegrityError):
            client.shard_bytes(entry.model_copy(update={"sha256": "0" * 64}))
    assert seen[0][1] is None  # never the key to a presigned URL
    assert seen[1][1] == "Bearer k"


@pytest.mark.parametrize("kind", ["noise", "gradient", "flat", "odd"])
def test_the_png_reader_matches_pillow(kind: str) -> None:
    rng = np.random.default_rng(0)
    shape = (37, 53) if kind == "odd" else (64, 64)
    image = {
        "noise": lambda: rng.integers(0, 256, shape, dtype=np.uint8),
        "gradient": lambda: np.add.outer(np.arange(64), np.arange(64)).astype(np.uint8),
        "flat": lambda: np.full(shape, 77, np.uint8),
        "odd": lambda: (rng.normal(128, 30, shape).clip(0, 255)).astype(np.uint8),
    }[kind]()
    for optimize in (False, True):
        buf = io.BytesIO()
        Image.fromarray(image, "L").save(buf, "PNG", optimize=optimize)
        np.testing.assert_array_equal(decode_png(buf.getvalue()), image)


@pytest.mark.parametrize("size", [16, 37, 100])
def test_resizing_shrinks_by_the_area_average_and_enlarges_bilinearly(size: int) -> None:
    image = np.random.default_rng(size).integers(0, 256, (64, 64), dtype=np.uint8)
    resized = resize(image, size)
    assert resized.shape == (size, size) and resized.dtype == np.uint8
    if size == 16:  # a whole factor: exactly the mean of each 4 x 4 block
        np.testing.assert_array_equal(resized, np.rint(image.reshape(16, 4, 16, 4).mean(axis=(1, 3))))
    if size < 64:  # each pixel repeated `size` times: the area average is the mean of 64 x 64 blocks
        fine = np.repeat(np.repeat(image, size, axis=0), size, axis=1).astype(np.float64)
        expected = fine.reshape(size, 64, size, 64).mean(axis=(1, 3))
    else:
        expected = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
    assert np.abs(resized - np.asarray(expected, np.float64)).max() <= 1
    assert resize(image, 64) is image
    assert (resize(np.full((30, 50), 77, np.uint8), size) == 77).all()  # stretched to a square


def test_a_shard_download_streams_to_disk_and_a_bad_one_leaves_nothing(tmp_path: Path) -> None:
    data = bytes(range(256)) * 1000
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=data))
    entry = ShardEntry(name="shard-000000.tar", sha256=sha256(data), bytes=len(data), images=1, first_index=0,
                       label_counts={}, url="http://s3.example/bucket/shard")  # fmt: skip
    received: list[int] = []
    with Client("http://gw", transport=transport) as client:
        client.download_shard(entry, tmp_path / "a" / entry.name, on_bytes=received.append)
        with pytest.raises(IntegrityError):
            client.download_shard(entry.model_copy(update={"sha256": "0" * 64}), tmp_path / "b" / entry.name)
    assert (tmp_path / "a" / entry.name).read_bytes() == data and sum(received) == len(data)
    assert list((tmp_path / "b").iterdir()) == []  # neither the shard nor a partial file


# ---- against the gateway in-process ---------------------------------------------------------------


@pytest.fixture
def gateway_app(tiny_store: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("THORAX_MODEL_STORE", str(tiny_store))
    settings = Settings(storage_dir=tmp_path / "data", batch_size=8, onnx_threads=1, api_keys="sesame")
    app = create_app(settings)
    with TestClient(app) as test_client:
        yield app, test_client


def test_generate_wait_manifest_and_samples_through_the_shard_route(gateway_app) -> None:
    app, test_client = gateway_app
    with Client("http://testserver", api_key="sesame", transport=InProcessTransport(test_client)) as client:
        assert [m.ref for m in client.models()] == ["tiny/1"]
        card = client.model_card("tiny")
        job = client.generate(12, {"cardiomegaly": 1}, seed=3, shard_size=5)
        samples = list(client.iter_samples(job, timeout=120))  # starts while the job runs
        status = client.wait(job, progress=True, timeout=120)
        manifest = client.manifest(job)
    assert status.state == "succeeded" and status.images_done == 12
    assert [s.metadata["index"] for s in samples] == list(range(12))
    assert all(s.labels["Cardiomegaly"] == 1.0 and s.image.shape == (16, 16) for s in samples)
    assert sorted(samples[0].labels) == sorted(card.labels.names)
    assert [s.url for s in manifest.shards] == [
        f"http://testserver/v1/jobs/{job.id}/shards/{i}" for i in range(3)
    ]
    folder = Path(status.location)
    for entry in manifest.shards:
        assert entry.sha256 == sha256((folder / entry.name).read_bytes())
    stored = json.loads((folder / "manifest.json").read_text())
    assert all("url" not in s for s in stored["shards"])  # the stored manifest stays as it was


def test_committed_shards_come_in_order_as_the_job_commits_them(gateway_app) -> None:
    app, test_client = gateway_app
    with Client("http://testserver", api_key="sesame", transport=InProcessTransport(test_client)) as client:
        job = client.generate(9, seed=4, shard_size=4)
        entries = list(client.committed_shards(job, timeout=120))
        manifest = client.manifest(job)
    assert (
        [e.name for e in entries]
        == [e.name for e in manifest.shards]
        == [f"shard-{i:06d}.tar" for i in range(3)]
    )
    assert [e.images for e in entries] == [4, 4, 1] and [e.sha256 for e in entries] == [
        e.sha256 for e in manifest.shards
    ]


def test_the_shard_route_needs_the_key_and_a_committed_shard(gateway_app) -> None:
    app, test_client = gateway_app
    with Client("http://testserver", api_key="sesame", transport=InProcessTransport(test_client)) as client:
        job = client.wait(client.generate(2, seed=1), progress=False, timeout=120)
        with pytest.raises(NotFoundError, match="no committed shard 5"):
            client._request("GET", f"/v1/jobs/{job.id}/shards/5")
    with Client("http://testserver", transport=InProcessTransport(test_client)) as anonymous:
        with pytest.raises(AuthenticationError):
            anonymous._request("GET", f"/v1/jobs/{job.id}/shards/0")


def test_a_cancelled_job_is_a_job_error(gateway_app) -> None:
    app, test_client = gateway_app
    with Client("http://testserver", api_key="sesame", transport=InProcessTransport(test_client)) as client:
        job = client.generate(5000, seed=1, shard_size=50)
        client.cancel(job)
        with pytest.raises(JobError, match="cancelled"):
            client.wait(job, progress=False, timeout=60)


def test_the_async_twin_does_the_same(gateway_app) -> None:
    app, _ = gateway_app

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with AsyncClient("http://testserver", api_key="sesame", transport=transport) as client:
            job = await client.generate(7, {"Mass": 1}, seed=9, shard_size=4)
            samples = [s async for s in client.iter_samples(job, timeout=120)]
            status = await client.wait(job, progress=False, timeout=120)
            return status, samples, await client.manifest(job)

    status, samples, manifest = asyncio.run(scenario())
    assert status.state == "succeeded" and len(samples) == 7 and manifest.images == 7
    assert all(s.labels["Mass"] == 1.0 for s in samples)


def test_visualize_returns_the_gateway_png_and_checks_arguments_first(gateway_app) -> None:
    app, test_client = gateway_app
    with Client("http://testserver", api_key="sesame", transport=InProcessTransport(test_client)) as client:
        strip = client.visualize("transitions", "cardiomegaly", values=[0, 1], seed=2)
        maps = client.visualize("difference", ["Mass", "edema"], seed=2, resolution=8)
        with pytest.raises(RequestError, match="unknown label 'Covid'"):
            client.visualize("difference", "Covid")
        with pytest.raises(NotFoundError):
            client.visualize("difference", "Mass", model="no-such-model")
        with pytest.raises(ValueError, match="invalid visualize request"):
            client.visualize("histogram", "Mass")  # never sent
    direct = test_client.post(
        "/v1/visualize",
        json={"kind": "transitions", "label": "Cardiomegaly", "values": [0, 1], "seed": 2},
        headers={"X-API-Key": "sesame"},
    )
    assert strip == direct.content and Image.open(io.BytesIO(strip)).size == (2 * 18 + 2, 20)
    assert (
        Image.open(io.BytesIO(maps)).size == (3 * 10, 2 * 10) and Image.open(io.BytesIO(maps)).mode == "RGB"
    )

    async def scenario() -> bytes:
        transport = httpx.ASGITransport(app=app)
        async with AsyncClient("http://testserver", api_key="sesame", transport=transport) as client:
            return await client.visualize("transitions", "Cardiomegaly", values=[0, 1], seed=2)

    assert asyncio.run(scenario()) == strip
