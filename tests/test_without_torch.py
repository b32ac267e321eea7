"""The client and the gateway on the shipped model, with nothing of torch: the gateway in-process (its
onnxruntime backend, a local folder as storage), the SDK talking to it, `build_dataset` topping real rows
up and `SyntheticDataset` giving every item at one resolution. .ci/run runs these on Python 3.13 too,
where torch is not installed."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from thoraxclient import Client, DatasetError, RequestError, SyntheticDataset, build_dataset

from service.app import create_app
from service.settings import Settings
from tests.conftest import REPO
from tests.gateway_helpers import sha256
from tests.in_process import InProcessTransport
from thorax.store import list_models, verify

SHIPPED_STORE = REPO / "model_store"


@pytest.fixture
def client(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("THORAX_MODEL_STORE", str(SHIPPED_STORE))
    settings = Settings(storage_dir=tmp_path / "data", batch_size=8, onnx_threads=1, api_keys="sesame")
    with TestClient(create_app(settings)) as test_client:
        with Client("http://testserver", api_key="sesame", transport=InProcessTransport(test_client)) as sdk:
            yield sdk


def test_the_shipped_model_makes_a_job_the_sdk_reads(client: Client) -> None:
    default = next(m for m in client.models() if m.default)
    assert default.ref == (SHIPPED_STORE / "default").read_text().strip()
    job = client.generate(10, {"cardiomegaly": 1}, seed=3, shard_size=4)
    samples = list(client.iter_samples(job, timeout=120))
    status = client.wait(job, progress=False, timeout=120)
    manifest = client.manifest(job)
    assert status.state == "succeeded" and status.images_done == 10 and len(manifest.shards) == 3
    assert [s.metadata["index"] for s in samples] == list(range(10))
    size = (default.resolution, default.resolution)
    assert all(s.image.shape == size and s.labels["Cardiomegaly"] == 1.0 for s in samples)
    assert Image.open(io.BytesIO(samples[0].data)).size == size  # a valid PNG
    folder = Path(status.location)
    assert all(e.sha256 == sha256((folder / e.name).read_bytes()) for e in manifest.shards)
    again = client.wait(client.generate(10, {"cardiomegaly": 1}, seed=3, shard_size=4), progress=False)
    assert [e.sha256 for e in client.manifest(again).shards] == [e.sha256 for e in manifest.shards]
    with pytest.raises(RequestError, match="Covid"):
        client.generate(1, {"Covid": 1})


def test_real_rows_topped_up_are_read_at_the_synthetic_resolution(
    client: Client, data_dir: Path, tmp_path: Path
) -> None:
    base = tmp_path / "base.csv"
    with open(data_dir / "labels.csv", newline="") as fh:
        base.write_text("".join(fh.readlines()[:21]))  # the header and 20 real rows
    effusion = sum(line.split(",")[6] == "1" for line in base.read_text().splitlines()[1:])
    card = build_dataset(tmp_path / "ds", {"Effusion": effusion + 4}, base=base, seed=1, client=client,
                         progress=False)  # fmt: skip
    assert (card.real_images, card.synthetic_images) == (20, 4)
    with pytest.raises(DatasetError, match="real_root"):
        SyntheticDataset(tmp_path / "ds", include_real=True)  # no images beside base.csv
    mixed = SyntheticDataset(tmp_path / "ds", include_real=True, real_root=data_dir)
    resolution = next(m for m in client.models() if m.default).resolution  # the images drawn come from it
    assert (len(mixed), mixed.real_images, mixed.resolution) == (24, 20, resolution)
    images = np.stack([mixed[i][0] for i in range(len(mixed))])  # what a DataLoader's collation does
    labels = np.stack([mixed[i][1] for i in range(len(mixed))])
    assert images.shape == (24, resolution, resolution) and images.dtype == np.uint8
    assert labels[:, card.label_names.index("Effusion")].sum() == effusion + 4
    assert len(SyntheticDataset(tmp_path / "ds")) == 4  # the synthetic rows alone


def test_the_shipped_evaluations_name_their_data_not_a_path_and_verify() -> None:
    """evaluation.json travels with the model: it names its data (folder name, image count, the label
    table's SHA-256), not the folder's path on the machine that ran it; SHA256SUMS covers the file."""
    models = list_models(SHIPPED_STORE)
    assert {m.ref for m in models} >= {(SHIPPED_STORE / "default").read_text().strip()}
    for model in models:
        verify(model)
        data = json.loads((model.path / "evaluation.json").read_text())["data"]
        assert data["name"] == "cxr256" and data["label_table"] == "labels.csv" and data["images"] > 2000
        assert data["label_table_sha256"] is None or len(data["label_table_sha256"]) == 64
        assert data["label_table_sha256"] or data["note"]  # a missing checksum says why
        assert "/" not in json.dumps(data), data
