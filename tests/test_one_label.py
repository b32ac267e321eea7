"""A generator with one label (the paediatric `kermany64`: Pneumonia only) through everything that meets
it: export and its card, the OpenVINO backend, a gateway job, label errors that name the field, pooling
with a 14-label adult model by label name, and the quick check of `thorax evaluate` on its cohort."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from thoraxclient import Client, build_dataset

from service.app import create_app
from service.backends import open_backend
from service.settings import Settings
from tests.gateway_helpers import samples, wait_for_job
from tests.in_process import InProcessTransport
from thorax.store import open_model
from training.config import load_config
from training.data import RadiographSet
from training.evaluate import NO_FINDING, EvalOptions, evaluate_model
from training.export import export_model
from training.train import RunOptions, train

CHILDREN = ("kermany_",)


@pytest.fixture(scope="module")
def child_run(tmp_path_factory, data_dir: Path) -> Path:
    """The tiny networks with kermany64's conditioning, trained for seconds on 64 children's images."""
    cfg = dataclasses.replace(
        load_config("tiny"), name="kids", label_names=("Pneumonia",), patient_prefixes=CHILDREN,
        cohort="Kermany children", projection=True, label_modulation=8, diversity_weight=0.2,
        patient_weighting=True,
    )  # fmt: skip
    run = tmp_path_factory.mktemp("kids-run")
    train(cfg, RunOptions(run, data_dir, limit_images=64, quiet=True))
    return run


@pytest.fixture(scope="module")
def store(child_run: Path, tiny_store: Path, tmp_path_factory) -> Path:
    """tiny/1 (the 14 NIH labels, the default) beside kids/1 (Pneumonia only)."""
    root = tmp_path_factory.mktemp("one-label") / "store"
    shutil.copytree(tiny_store, root)
    export_model(child_run, "kids", "1", store=root)
    return root


@pytest.fixture
def gateway(store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("THORAX_MODEL_STORE", str(store))
    settings = Settings(storage_dir=tmp_path / "data", backend="onnxruntime")
    with TestClient(create_app(settings)) as client:
        yield client


def test_the_export_carries_one_label_and_the_cohort(store: Path) -> None:
    folder = store / "kids" / "1"
    card = json.loads((folder / "model_card.json").read_text())
    assert card["labels"]["names"] == ["Pneumonia"]
    assert set(card["training_data"]["label_counts"]) == {"Pneumonia"}
    assert card["training_data"]["cohort"] == "Kermany children"
    graph = onnx.load(str(folder / "generator.onnx")).graph
    labels = next(i for i in graph.input if i.name == "labels")
    assert labels.type.tensor_type.shape.dim[1].dim_value == 1
    assert (store / "default").read_text().strip() == "tiny/1"  # exporting kids did not take the default


def test_openvino_gives_the_onnxruntime_images_of_a_one_label_model(store: Path) -> None:
    pytest.importorskip("openvino", reason="the openvino backend is not installed")
    model = open_model("kids/1", store)
    labels = np.array([[0.0], [1.0], [1.0], [0.5]], np.float32)
    reference = open_backend(model, Settings(), "onnxruntime", "fp32").generate(3, [0, 1, 2, 3], labels)
    images = open_backend(model, Settings(), "openvino", "fp32").generate(3, [0, 1, 2, 3], labels)
    assert reference.shape == (4, 16, 16)
    assert np.abs(images.astype(np.int16) - reference).max() <= 1
    assert not np.array_equal(reference[1], reference[2])  # same label, other latent


def test_a_job_on_a_one_label_model_and_the_errors_that_name_the_field(gateway: TestClient) -> None:
    job = gateway.post("/generate", json={"model": "kids/1", "count": 3, "labels": {"pneumonia": 1}})
    assert job.status_code == 202, job.text
    status = wait_for_job(lambda: gateway.get(job.json()["url"]).json(), 60)
    assert status["state"] == "succeeded", status
    shards = [p.read_bytes() for p in sorted(Path(status["location"]).glob("shard-*.tar"))]
    metadata = [json.loads(s["json"]) for s in samples(shards).values()]
    assert len(metadata) == 3 and all(m["labels"] == {"Pneumonia": 1.0} for m in metadata)
    wrong = {
        "labels.Effusion": {"Effusion": 1},  # an adult label this model does not have
        "labels.0": [[1, 0], [0], [1]],  # one vector of two values
    }
    for field, labels in wrong.items():
        answer = gateway.post("/generate", json={"model": "kids/1", "count": 3, "labels": labels})
        assert answer.status_code == 422, answer.text
        assert answer.json()["errors"][0]["field"] == field
    assert len(gateway.get("/v1/jobs").json()["jobs"]) == 1  # nothing was started by the bad requests


def test_pooling_by_label_name_sends_only_the_shared_label_to_the_one_label_model(
    gateway: TestClient, tmp_path: Path
) -> None:
    client = Client("http://testserver", transport=InProcessTransport(gateway))
    card = build_dataset(
        tmp_path / "ds", {"pneumonia": 6, "Mass": 4}, models={"tiny": 1, "kids": 1}, seed=3,
        comorbidity="none", client=client, progress=False,
    )  # fmt: skip
    requested = {job.model: job.requested for job in card.jobs}
    assert requested == {"tiny/1": {"Pneumonia": 3, "Mass": 4}, "kids/1": {"Pneumonia": 3}}
    assert (card.counts_after["Pneumonia"], card.counts_after["Mass"]) == (6, 4)
    with open(tmp_path / "ds" / "labels.csv") as fh:
        header, *rows = [line.rstrip("\n").split(",") for line in fh]
    kids = [dict(zip(header, row, strict=True)) for row in rows if row[-1] == "kids/1"]
    assert len(kids) == 3 and all(r["Pneumonia"] == "1" and r["Mass"] == "0" for r in kids)


def test_the_quick_check_judges_a_one_label_model_among_children(
    child_run: Path, tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("THORAX_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "generator"
    shutil.copytree(child_run / "generator", folder)
    opts = EvalOptions(
        checks=("sweep", "collapse"), epochs=1, sweep_steps=3, sweep_latents=2, collapse_latents=6
    )
    evaluation = evaluate_model(None, data_dir, opts, generator_dir=folder, progress=lambda _: None)
    sweep = evaluation["controllability"]
    assert list(sweep["labels"]) == ["Pneumonia"] and 0 <= sweep["labels_rising"] <= 1
    children = len(RadiographSet(data_dir, 16, ("Pneumonia",), "test", patient_prefixes=CHILDREN))
    assert sweep["real_reference"]["images"] == children
    assert set(evaluation["collapse"]["labels"]) == {NO_FINDING, "Pneumonia"}
    assert evaluation["cohort"]["patient_prefixes"] == list(CHILDREN)
