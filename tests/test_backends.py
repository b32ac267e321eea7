"""The generator backends behind one interface: which one `auto` picks on which machine, OpenVINO's
agreement with onnxruntime fp32 on the shipped model, the same bytes for the same spec and backend
(whatever the batch size), and the backend and precision a job records. The CUDA backend's test runs
only where onnxruntime sees a GPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service import backends
from service.app import create_app
from service.backends import BackendError, choose, open_backend
from service.backends.onnx import cuda_available
from service.catalog import Catalog
from service.settings import Settings
from tests.gateway_helpers import wait_for_job
from thorax.latents import latents_for
from thorax.store import REPO_STORE, default_ref, open_model

openvino = pytest.importorskip("openvino", reason="the openvino backend is not installed")
needs_bf16 = pytest.mark.skipif(not backends.cpu_has_bf16(), reason="this CPU has no AVX512-BF16 or AMX-BF16")


@pytest.fixture(autouse=True)
def shipped_store(monkeypatch):
    monkeypatch.setenv("THORAX_MODEL_STORE", str(REPO_STORE))


@pytest.fixture
def machine(monkeypatch):
    """Pretend to be a machine with the given CPU flags, GPU and OpenVINO install."""

    def pretend(flags: set[str], gpu: bool = False, openvino: bool = True) -> None:
        monkeypatch.setattr(backends, "cpu_flags", lambda: frozenset(flags))
        monkeypatch.setattr("service.backends.onnx.cuda_available", lambda: gpu)
        monkeypatch.setattr(backends, "_openvino_installed", lambda: openvino)

    return pretend


def test_auto_picks_the_gpu_then_bf16_openvino_then_onnxruntime(machine) -> None:
    machine({"avx2", "amx_bf16"}, gpu=True)
    assert choose(Settings()) == ("onnxruntime-cuda", "fp32")
    machine({"avx2", "avx512_bf16"})
    assert choose(Settings()) == ("openvino", "bf16")
    machine({"avx2", "avx512f"})  # no bf16 in hardware: onnxruntime fp32, as fast as OpenVINO fp32 here
    assert choose(Settings()) == ("onnxruntime", "fp32")
    machine({"avx2", "amx_bf16"}, openvino=False)
    assert choose(Settings()) == ("onnxruntime", "fp32")


def test_the_settings_override_the_choice(machine) -> None:
    machine({"amx_bf16"}, gpu=True)
    assert choose(Settings(backend="onnxruntime")) == ("onnxruntime", "fp32")
    assert choose(Settings(backend="openvino", precision="fp32")) == ("openvino", "fp32")
    assert choose(Settings(backend="auto", precision="fp32")) == ("onnxruntime-cuda", "fp32")
    machine({"avx2"})
    assert choose(Settings(backend="openvino")) == ("openvino", "fp32")  # bf16 only where the CPU has it
    with pytest.raises(BackendError, match="bf16 needs THORAX_BACKEND=openvino"):
        choose(Settings(backend="onnxruntime", precision="bf16"))


def grey(backend, count: int = 16, seed: int = 5) -> np.ndarray:
    labels = (np.random.default_rng(seed).random((count, 14)) < 0.15).astype(np.float32)
    return backend.generate(seed, list(range(count)), labels)


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    model = open_model("cxr64/2", REPO_STORE)
    return grey(open_backend(model, Settings(), "onnxruntime", "fp32"))


def within_one(images: np.ndarray, reference: np.ndarray) -> tuple[int, float]:
    diff = np.abs(images.astype(np.int16) - reference)
    return int(diff.max()), float((diff <= 1).mean())


def test_openvino_fp32_gives_the_onnxruntime_images(reference: np.ndarray) -> None:
    model = open_model("cxr64/2", REPO_STORE)
    worst, _ = within_one(grey(open_backend(model, Settings(), "openvino", "fp32")), reference)
    assert worst <= 1


@needs_bf16
def test_openvino_bf16_agrees_within_one_grey_level_on_99_percent_of_pixels(reference: np.ndarray) -> None:
    model = open_model("cxr64/2", REPO_STORE)
    backend = open_backend(model, Settings(), "openvino", "bf16")
    assert (backend.name, backend.precision) == ("openvino", "bf16")
    worst, within = within_one(grey(backend), reference)
    assert within >= 0.99 and worst <= 8, (worst, within)


# nih64: the labels feed every block too; nih64/6 and the 128 px nih128/3 to nih128/7 (the default, its
# spread and guidance per label, No_Finding's spread): and the latent draws their embedding
# (label_variation), so both halves read z
@pytest.mark.parametrize(
    "ref", ["cxr64/2", "nih64/1", "nih64/6", "nih128/3", "nih128/5", "nih128/6", "nih128/7"]
)
def test_the_split_graph_run_in_fp32_gives_the_onnxruntime_images(ref: str) -> None:
    """The bf16 backend runs the generator as two graphs, cut at 16 px (64 px for a 128 px model); run
    both halves in fp32 here (any CPU), chained, and they must give the one graph's images."""
    from service.backends.openvino import fp32_side, split_at  # after the importorskip above

    model = open_model(ref, REPO_STORE)
    resolution = model.card()["architecture"]["resolution"]
    side = fp32_side(resolution)
    assert side == {64: 16, 128: 64}[resolution]  # a quarter at 64 px, at least 16; half from 128 px
    head, tail = split_at(model.file("onnx"), side)
    assert tail is not None and tail.inputs[0].get_any_name() == "features"
    core, fp32 = openvino.Core(), {"INFERENCE_PRECISION_HINT": "f32"}
    head, tail = core.compile_model(head, "CPU", fp32), core.compile_model(tail, "CPU", fp32)
    latent_dim = model.card()["architecture"]["latent_dim"]
    z = latents_for(5, range(8), latent_dim)
    labels = (np.random.default_rng(5).random((8, 14)) < 0.15).astype(np.float32)
    inputs = {"z": z, "labels": labels}
    features = head(inputs)[0]
    tail_inputs = {i.get_any_name(): inputs.get(i.get_any_name(), features) for i in tail.inputs}
    if ref == "nih64/1":
        assert set(tail_inputs) == {"features", "labels"}
    if ref in ("nih64/6", "nih128/3", "nih128/5", "nih128/6", "nih128/7"):
        assert set(tail_inputs) == {"features", "labels", "z"}
    images = backends.to_grey(tail(tail_inputs)[0])
    reference = open_backend(model, Settings(), "onnxruntime", "fp32").generate(5, list(range(8)), labels)
    assert within_one(images, reference)[0] <= 1


@needs_bf16
@pytest.mark.parametrize(
    "ref", ["nih64/1", "nih64/6", "nih128/2", "nih128/3", "nih128/4", "nih128/5", "nih128/6", "nih128/7"]
)
def test_openvino_bf16_serves_a_generator_with_labels_in_every_block(ref: str) -> None:
    model = open_model(ref, REPO_STORE)
    backend = open_backend(model, Settings(), "openvino", "bf16")
    reference = grey(open_backend(model, Settings(), "onnxruntime", "fp32"))
    worst, within = within_one(grey(backend), reference)
    assert within >= 0.99 and worst <= 8, (worst, within)


def run_job(settings: Settings, body: dict) -> tuple[dict, list[bytes]]:
    with TestClient(create_app(settings)) as client:
        job = client.post("/generate", json=body).json()
        status = wait_for_job(lambda: client.get(job["url"]).json(), 120)
        assert status["state"] == "succeeded", status
        manifest = client.get(f"{job['url']}/manifest").json()
    folder = Path(status["location"])
    return manifest, [p.read_bytes() for p in sorted(folder.glob("shard-*.tar"))]


@needs_bf16
def test_the_same_spec_and_backend_give_the_same_bytes_whatever_the_batch_size(tmp_path: Path) -> None:
    body = {"count": 21, "shard_size": 10, "seed": 8, "labels": {"prior": "model"}}
    made = [
        run_job(Settings(storage_dir=tmp_path / f"b{batch}", batch_size=batch, backend="openvino"), body)
        for batch in (7, 16)
    ]
    (manifest, shards), (_, again) = made
    assert shards == again and len(shards) == 3
    assert (manifest["spec"]["backend"], manifest["spec"]["precision"]) == ("openvino", "bf16")
    other, theirs = run_job(Settings(storage_dir=tmp_path / "ort", backend="onnxruntime"), body)
    assert (other["spec"]["backend"], other["spec"]["precision"]) == ("onnxruntime", "fp32")
    assert theirs != shards  # another backend is another spec: its bytes differ, its images agree


@pytest.mark.parametrize("ref", ["cxr64/2", "nih128/7"])
def test_onnxruntime_gives_the_same_bytes_whatever_the_batch(ref: str) -> None:
    """On an Intel Xeon with AVX-512 onnxruntime rounded some pixels of a batch of 1 a grey level away
    from the same images in a batch of 8; the backend runs fixed chunks, so a job's bytes do not depend on
    THORAX_BATCH_SIZE (the Dask workers' 1 against a gateway's 8, tests/test_dask.py)."""
    model = open_model(ref, REPO_STORE)
    backend = open_backend(model, Settings(onnx_threads=1), "onnxruntime", "fp32")
    labels = np.zeros((19, 14), np.float32)
    labels[::2, 2] = 1.0
    whole = backend.generate(4, list(range(19)), labels)
    for batch in (1, 8):
        parts = [
            backend.generate(4, list(range(i, min(i + batch, 19))), labels[i : i + batch])
            for i in range(0, 19, batch)
        ]
        assert np.array_equal(np.concatenate(parts), whole), batch
    twice = backend.generate(4, [3, 3], np.stack([labels[3], labels[4]]))  # one latent, two label vectors
    assert np.array_equal(twice[0], whole[3]) and np.array_equal(
        twice[1], backend.generate(4, [3], labels[4:5])[0]
    )


def test_a_job_records_the_backend_that_made_it(tmp_path: Path) -> None:
    body = {"count": 3, "shard_size": 3, "seed": 2, "format": "dicom"}
    manifest, _ = run_job(Settings(storage_dir=tmp_path, backend="openvino", precision="fp32"), body)
    assert (manifest["spec"]["backend"], manifest["spec"]["precision"]) == ("openvino", "fp32")
    spec = json.loads(next(tmp_path.rglob("job.json")).read_text())
    assert (spec["backend"], spec["precision"]) == ("openvino", "fp32")


def test_the_catalog_opens_the_backend_a_job_recorded() -> None:
    catalog = Catalog(Settings(backend="onnxruntime"))
    default = catalog.get("cxr64/2")
    assert catalog.get("cxr64/2", "onnxruntime", "fp32") is default
    recorded = catalog.get("cxr64/2", "openvino", "fp32")
    assert (recorded.backend.name, recorded.backend.precision) == ("openvino", "fp32")
    assert catalog.get(None) is catalog.get(default_ref(REPO_STORE))  # the store's default model
    catalog.close()


@pytest.mark.skipif(not cuda_available(), reason="no CUDA GPU that onnxruntime can use")
def test_the_cuda_backend_gives_the_cpu_images(reference: np.ndarray) -> None:
    model = open_model("cxr64/2", REPO_STORE)
    backend = open_backend(model, Settings(), "onnxruntime-cuda", "fp32")
    assert backend.name == "onnxruntime-cuda"
    worst, _ = within_one(grey(backend), reference)
    assert worst <= 1
