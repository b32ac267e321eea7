"""`thorax export` and the model store: ONNX parity, TorchServe parity (real TorchServe), the privacy
boundary, the model card, and a store that refuses tampered models and pickles."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from thoraxclient.model_card import ModelCard

from tests.conftest import REPO
from tests.servers import torchserve
from thorax.cards import summary
from thorax.labels import NIH_LABELS
from thorax.latents import latents_for
from thorax.store import StoreError, find_model, list_models, open_model, write_sums
from training.checkpoint import load_generator
from training.export import ExportError, card_markdown, export_model, onnx_parity
from training.serve_handler import GeneratorHandler


@pytest.fixture(scope="module")
def run_dir(tiny_run: Path) -> Path:
    return tiny_run


@pytest.fixture(scope="module")
def store(tiny_store: Path) -> Path:
    return tiny_store


@pytest.fixture(scope="module")
def model(store: Path):
    return open_model(None, store)


def onnx_float(model, z: np.ndarray, labels: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model.file("onnx")), providers=["CPUExecutionProvider"])
    (images,) = session.run(["images"], {"z": z, "labels": labels})
    return images[:, 0]


def onnx_uint8(model, z: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.round((onnx_float(model, z, labels) + 1.0) * 127.5).astype(np.uint8)


def test_store_layout_and_default(store: Path, model) -> None:
    assert (store / "default").read_text().strip() == "tiny/1"
    assert model.ref == "tiny/1"
    names = {p.name for p in model.path.iterdir()}
    assert names == {
        "generator.onnx", "generator.safetensors", "generator.json", "tiny.mar", "model-config.yaml",
        "model_card.json", "model_card.md", "samples.png", "SHA256SUMS",
    }  # fmt: skip


def test_onnx_matches_pytorch_at_batch_1_and_16(model) -> None:
    G, _ = load_generator(model.path)
    assert onnx_parity(G, model.file("onnx"), batches=(1, 16)) <= 1e-4


def test_onnx_signature_is_pinned_with_a_dynamic_batch(model) -> None:
    proto = onnx.load(str(model.file("onnx")))
    onnx.checker.check_model(proto)
    assert max(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")) == 18

    def dims(value_info) -> list:
        return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]

    inputs = {i.name: dims(i) for i in proto.graph.input}
    assert inputs == {"z": ["batch", 16], "labels": ["batch", 14]}
    assert [(o.name, dims(o)[1:]) for o in proto.graph.output] == [("images", [1, 16, 16])]
    session = ort.InferenceSession(str(model.file("onnx")), providers=["CPUExecutionProvider"])
    for n in (1, 3, 33):
        (out,) = session.run(
            None, {"z": latents_for(0, range(n), 16), "labels": np.zeros((n, 14), np.float32)}
        )
        assert out.shape == (n, 1, 16, 16) and out.min() >= -1.0 and out.max() <= 1.0


def test_export_holds_the_generator_and_nothing_else(model) -> None:
    G, _ = load_generator(model.path)
    params = {f"G.{k}": v for k, v in G.state_dict().items()}
    proto = onnx.load(str(model.file("onnx")))
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    named = {k for k in weights if k.startswith("G.")}
    # every parameter the 16 px output uses is there, under its own name; the lower-resolution
    # toRGB layers are unused at full resolution and rightly absent
    used = {k for k in params if not k.startswith(("G.to_rgb.4.", "G.to_rgb.8."))}
    assert named == used, sorted(named ^ used)
    others = {k: v.size for k, v in weights.items() if k not in named}
    assert all(size <= 4 for size in others.values()), others  # only shape and scalar constants
    assert sum(v.size for k, v in weights.items() if k in named) == sum(params[k].numel() for k in used)
    for key in ("G.blocks.16.conv1.bias", "G.dense.bias"):
        assert np.array_equal(weights[key], params[key].numpy())
    with zipfile.ZipFile(model.file("mar")) as mar:
        members = set(mar.namelist())
    assert {"generator.safetensors", "networks.py", "serve_handler.py", "model-config.yaml"} <= members
    assert not any(m.endswith((".pt", ".pth", ".pkl", ".bin")) for m in members)
    from safetensors.torch import load_file

    tensors = load_file(model.file("weights"))
    assert set(tensors) == set(G.state_dict()) and not any("from_rgb" in k for k in tensors)


def test_card_validates_and_names_the_14_labels_in_order(model, run_dir: Path) -> None:
    card = ModelCard.model_validate(model.card())
    assert card.labels.names == list(NIH_LABELS)
    assert card.architecture.complete and card.architecture.kimg == pytest.approx(0.16, abs=0.01)
    split = json.loads((run_dir / "split.json").read_text())
    assert card.training_data.train_images == len(split["train"])
    n = card.training_data.train_images
    for name in NIH_LABELS:
        assert card.label_prior.frequency[name] == pytest.approx(
            card.training_data.label_counts[name] / n, abs=1e-6
        )
    i, j = NIH_LABELS.index("Cardiomegaly"), NIH_LABELS.index("Effusion")
    assert card.label_prior.cooccurrence[i][i] == pytest.approx(
        card.label_prior.frequency["Cardiomegaly"], abs=1e-6
    )
    assert card.label_prior.cooccurrence[i][j] == card.label_prior.cooccurrence[j][i]
    assert sum(p["count"] for p in card.label_prior.patterns) == n
    assert "NIH Clinical Center" in " ".join(s.attribution for s in card.training_data.sources)
    assert "not for diagnosis" not in card.intended_use and any("diagnosis" in x for x in card.not_for)
    md = model.file("card_markdown").read_text()
    assert "Privacy" in md and "Cardiomegaly" in md
    bad = model.card()
    bad["label_prior"]["frequency"] = dict(reversed(list(bad["label_prior"]["frequency"].items())))
    with pytest.raises(ValueError, match="model's order"):
        ModelCard.model_validate(bad)


def test_handler_without_java_matches_onnx(model, tmp_path: Path) -> None:
    with zipfile.ZipFile(model.file("mar")) as mar:
        mar.extractall(tmp_path)
    handler = GeneratorHandler()
    handler.load(tmp_path)
    labels = np.random.default_rng(0).random((5, 14), dtype=np.float32)
    answers = handler.handle(
        [{"body": {"seed": 9, "indices": [0, 1, 2], "labels": labels[:3].tolist()}},
         {"body": json.dumps({"z": latents_for(9, [3, 4], 16).tolist(), "labels": labels[3:].tolist()})}],
        None,
    )  # fmt: skip
    got = np.concatenate([np.frombuffer(a, np.uint8).reshape(-1, 16, 16) for a in answers])
    want = onnx_uint8(model, latents_for(9, range(5), 16), labels)
    assert got.shape == (5, 16, 16)
    assert int(np.abs(got.astype(int) - want.astype(int)).max()) <= 1
    with pytest.raises(ValueError, match="labels must be finite and within 0..1"):
        handler.parse({"seed": 1, "indices": [0], "labels": [2.0] * 14})


@pytest.mark.slow
def test_real_torchserve_matches_onnx_within_one_grey_level(model, tmp_path: Path) -> None:
    labels = np.zeros((6, 14), np.float32)
    labels[:, 1] = np.linspace(0, 1, 6)
    with torchserve(model.file("mar"), tmp_path) as url:
        body = json.dumps({"seed": 5, "indices": list(range(6)), "labels": labels.tolist()}).encode()
        request = urllib.request.Request(
            f"{url}/predictions/tiny", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as resp:
            shape = tuple(int(x) for x in resp.headers["X-Thorax-Shape"].split(","))
            assert resp.headers["Content-Type"] == "application/octet-stream"
            got = np.frombuffer(resp.read(), np.uint8).reshape(shape)
    want = onnx_uint8(model, latents_for(5, range(6), 16), labels)
    assert shape == (6, 16, 16)
    assert int(np.abs(got.astype(int) - want.astype(int)).max()) <= 1


def _copy(model, tmp_path: Path) -> Path:
    root = tmp_path / "store"
    shutil.copytree(model.path, root / "tiny" / "1")
    return root


def test_a_tampered_file_is_refused(model, tmp_path: Path) -> None:
    root = _copy(model, tmp_path)
    onnx_path = root / "tiny" / "1" / "generator.onnx"
    data = bytearray(onnx_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx_path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="generator.onnx does not match its checksum"):
        open_model("tiny/1", root)
    assert find_model("tiny", root).ref == "tiny/1"  # finding is fine; loading is what is refused


def test_unlisted_files_and_pickles_are_refused(model, tmp_path: Path) -> None:
    root = _copy(model, tmp_path)
    folder = root / "tiny" / "1"
    (folder / "extra.txt").write_text("not in SHA256SUMS")
    with pytest.raises(StoreError, match="not in SHA256SUMS: extra.txt"):
        open_model("tiny/1", root)
    (folder / "extra.txt").unlink()
    torch.save({"w": torch.zeros(2)}, folder / "weights.pt")  # a pickle, even if its checksum is listed
    write_sums(folder)
    with pytest.raises(StoreError, match="pickle"):
        open_model("tiny/1", root)


def test_export_refuses_to_overwrite_and_leaves_nothing_on_failure(
    run_dir: Path, store: Path, tmp_path: Path
) -> None:
    with pytest.raises(ExportError, match="exists"):
        export_model(run_dir, "tiny", "1", store=store)
    with pytest.raises(ExportError, match="run folder"):
        export_model(tmp_path / "nothing-here", "other", "1", store=store)
    assert [m.ref for m in list_models(store)] == ["tiny/1"]
    assert not [p for p in (store / "tiny").iterdir() if p.name.startswith(".")]


def test_a_stored_model_exports_again_with_a_label_guidance(model, tmp_path: Path) -> None:
    """The same weights under a new version that draws each label twice as far from no finding: every
    file carries the setting, the card records it, and no finding draws as before."""
    root = tmp_path / "store"
    guided = export_model(model.path, "tiny", "2", store=root, label_guidance=2.0)
    config = json.loads(guided.file("config").read_text())
    assert config["label_guidance"] == 2.0 and config["weights_from"] == "tiny/1"
    assert config["exported_from"] == json.loads(model.file("config").read_text())["exported_from"]
    card, source_card = ModelCard.model_validate(guided.card()), ModelCard.model_validate(model.card())
    assert card.architecture.label_guidance == 2.0 and card.architecture.kimg == source_card.architecture.kimg
    assert card.training_data == source_card.training_data
    assert "Label guidance 2" in guided.file("card_markdown").read_text()
    assert "label guidance: 2 " in summary(card.model_dump(mode="json"))
    assert "label guidance" not in summary(source_card.model_dump(mode="json"))
    assert source_card.architecture.label_guidance == 1.0
    before, after = load_generator(model.path)[0], load_generator(guided.path)[0]
    assert after.label_guidance == 2.0
    for key, value in before.state_dict().items():
        assert torch.equal(after.state_dict()[key], value)
    z = latents_for(5, range(4), 16)
    labels = np.zeros((4, 14), np.float32)
    labels[2:, 1] = 1.0
    old, new = onnx_uint8(model, z, labels), onnx_uint8(guided, z, labels)
    assert np.array_equal(old[:2], new[:2])  # no finding as before
    assert not np.array_equal(old[2:], new[2:])
    with zipfile.ZipFile(guided.file("mar")) as mar:  # TorchServe's copy draws the same
        mar.extractall(tmp_path / "mar")
    handler = GeneratorHandler()
    handler.load(tmp_path / "mar")
    (answer,) = handler.handle(
        [{"body": {"seed": 5, "indices": [0, 1, 2, 3], "labels": labels.tolist()}}], None
    )
    got = np.frombuffer(answer, np.uint8).reshape(4, 16, 16)
    assert int(np.abs(got.astype(int) - new.astype(int)).max()) <= 1


def test_a_label_guidance_per_place_is_baked_in_and_described(model, tmp_path: Path) -> None:
    """Guidance at one place (here the input: the tiny model has no modulations): the card, its markdown
    and `models show` name the place, the ONNX graph draws no finding as before and a label
    differently; a place the model lacks is refused before anything is written."""
    root = tmp_path / "store"
    guided = export_model(model.path, "tiny", "2", store=root, label_guidance={"input": 2.5})
    card = ModelCard.model_validate(guided.card())
    assert card.architecture.label_guidance == {"input": 2.5}
    assert json.loads(guided.file("config").read_text())["label_guidance"] == {"input": 2.5}
    assert "Label guidance input 2.5: at each place named" in guided.file("card_markdown").read_text()
    assert "label guidance: input 2.5 (at those places" in summary(card.model_dump(mode="json"))
    assert load_generator(guided.path)[0].label_guidance == {"input": 2.5}
    judged = card.model_copy(update={"evaluation": {"label_guidance": {"input": 2.5}}})  # as evaluate writes
    assert "| label guidance | input 2.5 |" in card_markdown(judged)
    z = latents_for(5, range(4), 16)
    labels = np.zeros((4, 14), np.float32)
    labels[2:, 1] = 1.0
    old, new = onnx_uint8(model, z, labels), onnx_uint8(guided, z, labels)
    assert np.array_equal(old[:2], new[:2]) and not np.array_equal(old[2:], new[2:])
    for wrong, why in [({"32": 2.0}, "at block 32: this generator's labels enter at the input only")]:
        with pytest.raises(ExportError, match=why):
            export_model(model.path, "tiny", "3", store=root, label_guidance=wrong)
    assert not (root / "tiny" / "3").exists()
    assert not [p for p in (root / "tiny").iterdir() if p.name.startswith(".")]


def test_a_bad_label_guidance_or_a_missing_run_writes_nothing(model, tmp_path: Path) -> None:
    root = tmp_path / "store"
    with pytest.raises(ExportError, match="label_guidance"):
        export_model(model.path, "tiny", "2", store=root, label_guidance=0.0)
    with pytest.raises(ExportError, match="no label_variation"):  # the tiny model's embedding is fixed
        export_model(model.path, "tiny", "2", store=root, label_variation_scale=1.5)
    with pytest.raises(ExportError, match="label_variation_scale must be in"):
        export_model(model.path, "tiny", "2", store=root, label_variation_scale=9.0)
    copy = tmp_path / "copy" / "tiny" / "1"
    shutil.copytree(model.path, copy)
    config = json.loads((copy / "generator.json").read_text())
    config["exported_from"] = str(tmp_path / "gone" / "checkpoints" / "ckpt.json")
    (copy / "generator.json").write_text(json.dumps(config))
    write_sums(copy)
    with pytest.raises(ExportError, match="has no config.json"):
        export_model(copy, "tiny", "2", store=root)
    assert not root.exists()  # neither call got as far as the store


def test_models_commands(store: Path) -> None:
    env = {"THORAX_MODEL_STORE": str(store), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}

    def thorax(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "thorax.cli", *args], capture_output=True, text=True,
                              cwd=REPO, env=env, timeout=120)  # fmt: skip

    listed = thorax("models", "list")
    assert listed.returncode == 0 and listed.stdout.startswith("* tiny/1")
    shown = thorax("models", "show", "tiny", "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["labels"]["names"] == list(NIH_LABELS)
    summary = thorax("models", "show", "tiny")  # the readable summary names the model and its labels
    assert summary.returncode == 0 and "tiny/1" in summary.stdout and "Cardiomegaly" in summary.stdout
    assert thorax("models", "verify").stdout.strip() == "ok  tiny/1"
    missing = thorax("models", "show", "nope")
    assert missing.returncode == 2 and "no model 'nope'" in missing.stderr


def test_a_run_on_nih_layout_data_exports_with_its_label_counts(tmp_path: Path, data_dir: Path) -> None:
    """NIH's `Data_Entry_2017` table (findings joined by `|`) describes the training data in the card too."""
    import csv
    import gzip

    from training.config import load_config
    from training.data import read_label_table
    from training.train import RunOptions, train

    table = read_label_table(data_dir / "labels.csv", NIH_LABELS)
    picks = [i for i, f in enumerate(table.filenames) if f.startswith("nih_")][:40]
    data = tmp_path / "nih"
    (data / "images").mkdir(parents=True)
    rows = []
    for i in picks:
        shutil.copy(data_dir / "images" / table.filenames[i], data / "images" / table.filenames[i])
        found = [n.replace("_", " ") for n, v in zip(NIH_LABELS, table.labels[i], strict=True) if v]
        rows.append({"Image Index": table.filenames[i], "Finding Labels": "|".join(found) or "No Finding",
                     "Patient ID": table.patient_ids[i].removeprefix("nih_")})  # fmt: skip
    with gzip.open(data / "Data_Entry_2017_v2020.csv.gz", "wt", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    run = tmp_path / "run"
    train(load_config("tiny"), RunOptions(run, data, quiet=True))
    model = export_model(run, "nih-tiny", "1", store=tmp_path / "store")
    card = ModelCard.model_validate(model.card())
    split = json.loads((run / "split.json").read_text())
    train_rows = [i for i in picks if table.filenames[i] in set(split["train"])]
    assert card.training_data.train_images == len(train_rows) > 0
    assert card.training_data.sources[0].name.startswith("NIH ChestX-ray14")
    for j, name in enumerate(NIH_LABELS):
        assert card.training_data.label_counts[name] == sum(int(table.labels[i][j]) for i in train_rows)


CONDITIONING_VARIANTS = {
    "embedding": {"label_embedding": True},
    # issue 11's recipe: labels into every block, projection critic, ramp, augmentation, one cohort
    "modulation": {
        "label_modulation": 8,
        "projection": True,
        "cond_ramp_start_kimg": 0.032,
        "cond_ramp_end_kimg": 0.064,
        "augment_p": 0.3,
        "ada_target": 0.6,
        "rare_label_power": 0.5,
        "diversity_weight": 0.2,
        "patient_prefixes": ("nih_",),
        "cohort": "NIH adults",
    },
}


@pytest.mark.parametrize("variant", sorted(CONDITIONING_VARIANTS))
def test_a_conditioning_variant_run_exports_and_serves(tmp_path: Path, data_dir: Path, variant: str) -> None:
    """The optional label embedding and the per-block label modulation go through ONNX (export checks
    parity) and the TorchServe handler; a cohort run's card counts that cohort's images only."""
    import dataclasses

    from training.config import load_config
    from training.train import RunOptions, train

    settings = CONDITIONING_VARIANTS[variant]
    cfg = dataclasses.replace(load_config("tiny"), name=f"tiny-{variant}", **settings)
    run = tmp_path / "run"
    train(cfg, RunOptions(run, data_dir, limit_images=32, quiet=True))
    model = export_model(run, f"tiny-{variant}", "1", store=tmp_path / "store")
    config = json.loads(model.file("config").read_text())
    assert config["label_embedding"] is settings.get("label_embedding", False)
    assert config["label_modulation"] == settings.get("label_modulation", 0)
    if "patient_prefixes" in settings:
        assert config["patient_prefixes"] == ["nih_"] and config["cohort"] == "NIH adults"
        card = ModelCard.model_validate(model.card())
        assert [source.name.split()[0] for source in card.training_data.sources] == ["NIH"]
        assert card.training_data.cohort == "NIH adults"
        assert not any("children are mixed" in c for c in card.training_data.caveats)
        assert "projection critic" in card.architecture.conditioning
        assert "every block" in card.architecture.conditioning
        assert "mode-seeking" in card.architecture.conditioning
        assert "One cohort only: NIH adults" in model.file("card_markdown").read_text()
    with zipfile.ZipFile(model.file("mar")) as mar:
        mar.extractall(tmp_path / "mar")
    handler = GeneratorHandler()
    handler.load(tmp_path / "mar")
    labels = np.zeros((2, 14), np.float32)
    labels[1, 2] = 1.0
    (answer,) = handler.handle([{"body": {"seed": 3, "indices": [0, 0], "labels": labels.tolist()}}], None)
    got = np.frombuffer(answer, np.uint8).reshape(2, 16, 16)
    want = onnx_uint8(model, latents_for(3, [0, 0], 16), labels)
    assert int(np.abs(got.astype(int) - want.astype(int)).max()) <= 1
    assert not np.array_equal(got[0], got[1])  # the label changes the image
    if settings.get("label_modulation"):  # guidance on one block's modulations (export checks parity)
        guided = export_model(model.path, f"tiny-{variant}", "2", store=tmp_path / "store",
                              label_guidance={"8": 4.0})  # fmt: skip
        z = latents_for(3, [0, 1], 16)
        before, after = onnx_float(model, z, labels), onnx_float(guided, z, labels)
        assert np.array_equal(before[0], after[0])  # no finding as before
        assert np.abs(before[1] - after[1]).max() > 1e-4
        with pytest.raises(ExportError, match="names block 32, but this generator's largest is 16"):
            export_model(
                model.path, f"tiny-{variant}", "3", store=tmp_path / "store", label_guidance={"32": 2.0}
            )


def test_a_card_with_a_guidance_per_label_reads_back_and_says_so() -> None:
    raw = json.loads((REPO / "model_store" / "nih128" / "4" / "model_card.json").read_text())
    raw["architecture"]["label_guidance"] = {"*": 2.0, "Pneumonia": 1.0}
    card = ModelCard.model_validate(raw)
    assert card.architecture.label_guidance_text() == "2, Pneumonia 1" and card.architecture.is_guided()
    text = card_markdown(card)
    assert "Label guidance 2, Pneumonia 1: every label's change from no finding is taken" in text
    assert "an image with Pneumonia takes that label's own strength at every place" in text
    assert (
        "label guidance: 2, Pneumonia 1 (everywhere labels are drawn that many times as far as "
        in summary(raw)
        and "images with a label named: that label's strength" in summary(raw)
    )
    raw["architecture"]["label_guidance"] = {"16": 2.5, "*": 2.0}
    card = ModelCard.model_validate(raw)
    assert card.architecture.label_guidance_text() == "16 px 2.5, elsewhere 2"
    assert "elsewhere at the strength given for elsewhere" in card_markdown(card)
    assert "elsewhere as trained" not in summary(raw)


def test_a_card_with_a_spread_per_label_reads_back_and_says_so() -> None:
    raw = json.loads((REPO / "model_store" / "nih128" / "4" / "model_card.json").read_text())
    raw["architecture"]["label_variation_scale"] = {"Cardiomegaly": 1.45, "Edema": 1.9}
    card = ModelCard.model_validate(raw)
    assert card.architecture.label_variation_text() == "Cardiomegaly 1.45, Edema 1.9"
    assert "Label variation scale Cardiomegaly 1.45, Edema 1.9: for an image with one" in card_markdown(card)
    assert "label variation scale: Cardiomegaly 1.45, Edema 1.9 (images with those labels" in summary(raw)
    raw["architecture"]["label_variation_scale"] = {"Edema": 0.0}
    with pytest.raises(ValueError, match="must be above 0"):
        ModelCard.model_validate(raw)
