"""The encoding stage: the fast DICOM encoder writes pydicom's bytes exactly, and a job's shards are the
same bytes however many threads encode them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service import pipeline
from service.app import create_app
from service.imaging import DicomEncoder, dicom_bytes
from service.settings import Settings
from tests.gateway_helpers import wait_for_job
from thorax.store import REPO_STORE


@pytest.mark.parametrize(
    "shape, index", [((64, 64), 0), ((5, 7), 12_345), ((256, 256), 999_999_999), ((1, 1), 7)]
)
def test_the_dicom_encoder_writes_pydicoms_bytes(shape: tuple[int, int], index: int) -> None:
    image = np.random.default_rng(index).integers(0, 256, shape, dtype=np.uint8)
    job = {"model": "cxr64/2", "model_sha": "a" * 64, "spec_sha": "b" * 64}
    labels = {"Cardiomegaly": 1.0, "Effusion": 0.25, "Mass": 0.0}
    assert DicomEncoder(**job)(image, index=index, labels=labels) == dicom_bytes(
        image, index=index, labels=labels, **job
    )


@pytest.mark.parametrize("image_format", ["png", "dicom"])
def test_the_shards_do_not_depend_on_the_encoding_threads(
    tmp_path: Path, monkeypatch, image_format: str
) -> None:
    monkeypatch.setenv("THORAX_MODEL_STORE", str(REPO_STORE))
    body = {"count": 40, "shard_size": 25, "seed": 4, "format": image_format, "labels": {"prior": "model"}}
    made = []
    for threads in (1, 3):
        monkeypatch.setattr(pipeline, "ENCODE_THREADS", threads)
        settings = Settings(storage_dir=tmp_path / str(threads), backend="onnxruntime", batch_size=16)
        with TestClient(create_app(settings)) as client:
            job = client.post("/generate", json=body).json()
            status = wait_for_job(lambda job=job: client.get(job["url"]).json(), 120)
        assert status["state"] == "succeeded", status
        made.append([p.read_bytes() for p in sorted(Path(status["location"]).glob("shard-*.tar"))])
    assert made[0] == made[1] and len(made[0]) == 2
