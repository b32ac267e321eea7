"""The training loop on real radiographs with the tiny config: finite losses, sample grids,
checkpoints that resume bit for bit, the patient-disjoint split, both label-table layouts."""

from __future__ import annotations

import csv
import dataclasses
import gzip
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from thorax.errors import UserError
from thorax.labels import NIH_LABELS
from training.config import config_from_dict, load_config
from training.data import RadiographSet, patient_split, read_label_table
from training.train import RunOptions, train

LIMIT = 96  # training images used by the tiny runs


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, data_dir: Path) -> Path:
    run_dir = tmp_path_factory.mktemp("tiny-run")
    train(load_config("tiny"), RunOptions(run_dir, data_dir, limit_images=LIMIT, quiet=True, log_every_s=0))
    return run_dir


def test_tiny_run_on_real_images_has_finite_losses(tiny_run: Path) -> None:
    records = [json.loads(line) for line in (tiny_run / "log.jsonl").read_text().splitlines()]
    assert records, "no progress was logged"
    assert {r["resolution"] for r in records} == {4, 8, 16}
    for r in records:
        for key in ("loss_D", "loss_G", "wasserstein", "gp", "label_D", "label_G"):
            assert math.isfinite(r[key]), (key, r)
    assert records[-1]["kimg"] == pytest.approx(load_config("tiny").total_kimg, abs=0.008)


def test_tiny_run_writes_sample_grids_for_every_stage(tiny_run: Path) -> None:
    grids = sorted(p.name for p in (tiny_run / "samples").glob("0*.png"))
    phases = {name.split("-kimg")[0] for name in grids}
    assert phases == {"004-stable", "008-fade", "008-stable", "016-fade", "016-stable"}
    with Image.open(tiny_run / "samples" / "latest.png") as im:
        # 15 rows (no finding + 14 labels) x 8 columns of 16 px tiles with 2 px gaps
        assert im.size == (8 * 18 + 2, 15 * 18 + 2)
        assert im.mode == "L"
        assert np.asarray(im).std() > 1.0  # not a blank canvas


def test_exported_generator_holds_no_discriminator(tiny_run: Path) -> None:
    tensors = load_file(tiny_run / "generator" / "generator.safetensors")
    config = json.loads((tiny_run / "generator" / "generator.json").read_text())
    assert tensors and not any("from_rgb" in k or "mbstd" in k for k in tensors)
    assert config["label_names"] == list(NIH_LABELS)
    assert config["training"]["complete"] is True
    ckpt = load_file(next((tiny_run / "checkpoints").glob("*.safetensors")))
    assert any(k.startswith("D/") for k in ckpt)  # the checkpoint, which stays in house, does


def test_checkpoint_then_resume_gives_identical_weights(tmp_path: Path, data_dir: Path) -> None:
    cfg = load_config("tiny")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(cfg, RunOptions(straight, data_dir, limit_images=LIMIT, quiet=True, stop_kimg=0.112))
    # the same run, stopped part-way through the 8 px fade-in and continued by a new process-level Trainer
    train(cfg, RunOptions(resumed, data_dir, limit_images=LIMIT, quiet=True, stop_kimg=0.048))
    first = json.loads((resumed / "checkpoints" / "latest.json").read_text())["checkpoint"]
    assert json.loads((resumed / "checkpoints" / first).read_text())["images_shown"] == 48
    train(cfg, RunOptions(resumed, data_dir, limit_images=LIMIT, quiet=True, stop_kimg=0.112))

    def final(run: Path) -> tuple[dict, dict]:
        meta_name = json.loads((run / "checkpoints" / "latest.json").read_text())["checkpoint"]
        meta = json.loads((run / "checkpoints" / meta_name).read_text())
        return meta, load_file(run / "checkpoints" / meta["weights"])

    meta_a, weights_a = final(straight)
    meta_b, weights_b = final(resumed)
    assert meta_a["images_shown"] == meta_b["images_shown"] == 112
    assert meta_a["step"] == meta_b["step"]
    assert weights_a.keys() == weights_b.keys()
    different = [k for k in weights_a if not torch.equal(weights_a[k], weights_b[k])]
    assert different == [], f"weights differ after resume: {different[:5]}"


def _latest(run: Path) -> tuple[dict, dict]:
    """A run's latest checkpoint: its JSON state and its weights."""
    folder = run / "checkpoints"
    meta = json.loads((folder / json.loads((folder / "latest.json").read_text())["checkpoint"]).read_text())
    return meta, load_file(folder / meta["weights"])


def test_a_new_run_started_from_another_runs_checkpoint_continues_it_exactly(
    tmp_path: Path, data_dir: Path
) -> None:
    cfg = load_config("tiny")
    straight, first, second = tmp_path / "straight", tmp_path / "first", tmp_path / "second"
    train(cfg, RunOptions(straight, data_dir, limit_images=LIMIT, quiet=True, stop_kimg=0.112))
    train(cfg, RunOptions(first, data_dir, limit_images=LIMIT, quiet=True, stop_kimg=0.048))
    # another config (in practice a longer schedule) in its own folder, from the first run's checkpoint
    longer = dataclasses.replace(cfg, name="tiny-longer")
    opts = RunOptions(second, data_dir, limit_images=LIMIT, quiet=True, stop_kimg=0.112, init_from=first)
    train(longer, opts)
    assert json.loads((second / "config.json").read_text())["name"] == "tiny-longer"
    assert (second / "split.json").read_text() == (first / "split.json").read_text()
    (meta_a, a), (meta_b, b) = _latest(straight), _latest(second)
    assert meta_a["images_shown"] == meta_b["images_shown"] == 112
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert _latest(first)[0]["images_shown"] == 48  # the first run is untouched
    # a run with other networks, or a folder without a checkpoint, is refused with the reason
    other = dataclasses.replace(cfg, name="tiny-other", latent_dim=cfg.latent_dim * 2)
    with pytest.raises(UserError, match="latent_dim"):
        train(other, RunOptions(tmp_path / "third", data_dir, limit_images=LIMIT, init_from=first))
    wider = dataclasses.replace(
        cfg, name="tiny-wider", stages=(dataclasses.replace(cfg.stages[0], channels=7),) + cfg.stages[1:]
    )
    with pytest.raises(UserError, match="channels"):
        train(wider, RunOptions(tmp_path / "fifth", data_dir, limit_images=LIMIT, init_from=first))
    with pytest.raises(UserError, match="no checkpoint"):
        train(longer, RunOptions(tmp_path / "fourth", data_dir, limit_images=LIMIT, init_from=tmp_path))


def test_split_never_puts_a_patient_on_two_sides(data_dir: Path) -> None:
    table = read_label_table(data_dir / "labels.csv", NIH_LABELS)
    split = patient_split(table, (0.8, 0.1, 0.1), seed=0)
    patient_of = dict(zip(table.filenames, table.patient_ids, strict=True))
    sides = {name: {patient_of[f] for f in files} for name, files in split.items()}
    assert (
        not sides["train"] & sides["val"]
        and not sides["train"] & sides["test"]
        and not sides["val"] & sides["test"]
    )
    with open(data_dir / "labels.csv", newline="") as fh:
        rows = sum(1 for _ in fh) - 1  # the header
    assert sum(len(f) for f in split.values()) == len(table.filenames) == rows > 2000
    fractions = [len(sides[s]) / len(set(table.patient_ids)) for s in ("train", "val", "test")]
    assert fractions == pytest.approx([0.8, 0.1, 0.1], abs=0.04)
    # deterministic: the same table gives the same split, whatever its row order
    reordered = read_label_table(data_dir / "labels.csv", NIH_LABELS)
    for field in ("filenames", "patient_ids"):
        getattr(reordered, field).reverse()
    reordered.labels = reordered.labels[::-1]
    again = patient_split(reordered, (0.8, 0.1, 0.1), seed=0)
    assert {k: sorted(v) for k, v in again.items()} == {k: sorted(v) for k, v in split.items()}


def test_run_saves_its_split(tiny_run: Path) -> None:
    split = json.loads((tiny_run / "split.json").read_text())
    assert len(split["train"]) > len(split["test"]) > 0
    assert not set(split["train"]) & set(split["test"])


def test_nih_data_entry_layout(tmp_path: Path, data_dir: Path) -> None:
    """A folder in NIH's layout: `Data_Entry_2017_v2020.csv.gz`, images under `images_001/images/`."""
    table = read_label_table(data_dir / "labels.csv", NIH_LABELS)
    picks = [i for i, f in enumerate(table.filenames) if f.startswith("nih_")][:6]
    (tmp_path / "images_001" / "images").mkdir(parents=True)
    rows = []
    for i in picks:
        name = table.filenames[i].removeprefix("nih_")
        shutil.copy(data_dir / "images" / table.filenames[i], tmp_path / "images_001" / "images" / name)
        findings = (
            "|".join(n.replace("_", " ") for n, v in zip(NIH_LABELS, table.labels[i], strict=True) if v)
            or "No Finding"
        )
        rows.append(
            {
                "Image Index": name,
                "Finding Labels": findings,
                "Patient ID": table.patient_ids[i].removeprefix("nih_"),
            }
        )
    with gzip.open(tmp_path / "Data_Entry_2017_v2020.csv.gz", "wt", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["Image Index", "Finding Labels", "Patient ID"])
        writer.writeheader()
        writer.writerows(rows)
    data = RadiographSet(tmp_path, 32, NIH_LABELS, split="all")
    assert len(data) == 6
    assert data.images_at(16).shape == (6, 1, 16, 16)
    by_name = {f: data.labels[k] for k, f in enumerate(data.filenames)}
    for i in picks:
        assert torch.equal(
            by_name[table.filenames[i].removeprefix("nih_")], torch.from_numpy(table.labels[i])
        )


def test_images_are_scaled_to_minus_one_one_and_area_downsampled(data_dir: Path) -> None:
    data = RadiographSet(data_dir, 64, NIH_LABELS, split="all", limit=4)
    full = data.images_at(64)
    assert full.min() >= -1.0 and full.max() <= 1.0
    small = data.images_at(16)
    assert torch.allclose(small, torch.nn.functional.avg_pool2d(full, 4), atol=1e-5)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"resolution": 48}, "power of two"),
        (
            {"stages": [{"resolution": 8, "channels": 4, "batch": 4, "fade_kimg": 0, "stable_kimg": 1}]},
            "stages must cover",
        ),
        ({"split": [0.5, 0.5, 0.5]}, "sum to 1"),
        ({"learning_rate": 0.1}, "unknown setting"),
    ],
)
def test_bad_configs_are_refused_with_the_reason(change: dict, message: str) -> None:
    raw = load_config("tiny").to_dict()
    raw.update(change)
    with pytest.raises(UserError, match=message):
        config_from_dict(raw)


def test_a_run_folder_refuses_another_config(tiny_run: Path, data_dir: Path) -> None:
    with pytest.raises(UserError, match="holds a run of config 'tiny'"):
        train(load_config("cxr64"), RunOptions(tiny_run, data_dir, limit_images=8, quiet=True))


def test_bf16_autocast_run_keeps_the_penalty_finite(tmp_path: Path, data_dir: Path) -> None:
    train(
        load_config("tiny"),
        RunOptions(tmp_path, data_dir, limit_images=LIMIT, quiet=True, bf16=True, log_every_s=0),
    )
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert records and all(math.isfinite(r["gp"]) and math.isfinite(r["loss_D"]) for r in records)
    assert json.loads((tmp_path / "checkpoints" / "latest.json").read_text())  # and it checkpointed
    meta = json.loads((tmp_path / "generator" / "generator.json").read_text())
    assert meta["training"]["complete"] is True


def test_a_bf16_config_trains_in_fp32_on_a_cpu_without_bf16_arithmetic(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A config's bf16 autocast is dropped, with a word why, where the CPU has neither AVX512-BF16 nor
    AMX (emulated bf16 trained at half fp32's speed); --bf16 keeps it, and a CPU with either keeps it."""
    from training.train import Trainer

    cfg = dataclasses.replace(load_config("tiny"), bf16=True)

    def trainer(capabilities: dict[str, bool], bf16: bool | None, run: str) -> Trainer:
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
        opts = RunOptions(tmp_path / run, data_dir, limit_images=8, quiet=True, bf16=bf16)
        return Trainer(cfg, opts)

    plain = trainer({"avx512f": True, "avx512_bf16": False, "amx_bf16": False}, None, "plain")
    assert plain.bf16 is False and "this CPU has no bf16 arithmetic" in plain.bf16_note
    assert trainer({"avx512_bf16": True}, None, "avx512").bf16 is True
    assert trainer({"amx_bf16": True}, None, "amx").bf16 is True
    forced = trainer({"avx512_bf16": False}, True, "forced")
    assert forced.bf16 is True and forced.bf16_note == ""
    assert trainer({"avx512_bf16": True}, False, "off").bf16 is False


def test_init_seed_changes_the_networks_but_not_the_split(tmp_path: Path, data_dir: Path) -> None:
    cfg = load_config("tiny")
    runs = {
        "default": cfg,
        "explicit": dataclasses.replace(cfg, init_seed=cfg.seed),
        "other": dataclasses.replace(cfg, init_seed=cfg.seed + 1),
    }
    for name, run_cfg in runs.items():
        train(run_cfg, RunOptions(tmp_path / name, data_dir, limit_images=LIMIT, quiet=True, stop_kimg=0.016))
    weights = {name: _latest(tmp_path / name)[1] for name in runs}
    splits = {name: json.loads((tmp_path / name / "split.json").read_text()) for name in runs}
    assert splits["other"]["train"] == splits["default"]["train"]
    assert splits["other"]["test"] == splits["default"]["test"]
    same = [k for k in weights["default"] if torch.equal(weights["default"][k], weights["explicit"][k])]
    assert len(same) == len(weights["default"])  # init_seed = seed is the default
    moved = [k for k in weights["default"] if not torch.equal(weights["default"][k], weights["other"][k])]
    assert any(k.startswith("G/") for k in moved) and any(k.startswith("D/") for k in moved)


def test_a_run_with_label_variation_trains_its_spread_and_exports_it(tmp_path: Path, data_dir: Path) -> None:
    raw = load_config("tiny").to_dict()
    cfg = config_from_dict(
        {
            **raw,
            "label_modulation": 8,
            "label_variation": True,
            "label_variation_kl": 0.1,
            "diversity_weight": 0.2,
        }
    )
    train(cfg, RunOptions(tmp_path, data_dir, limit_images=LIMIT, quiet=True, log_every_s=0))
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    kls = [r["label_kl"] for r in records if "label_kl" in r]
    assert kls and all(math.isfinite(v) and v >= 0 for v in kls)
    meta = json.loads((tmp_path / "generator" / "generator.json").read_text())
    assert meta["label_variation"] is True and meta["training"]["complete"] is True
    weights = load_file(tmp_path / "generator" / "generator.safetensors")
    assert weights["label_log_sigma.weight"].abs().max() > 0  # zero at the start: trained

    # its spread widened at export and in a trial evaluation: recorded in every file that describes it
    import onnxruntime as ort
    from thoraxclient.model_card import ModelCard

    from thorax.cards import summary
    from thorax.latents import latents_for
    from training.evaluate import EvalOptions, evaluate_model
    from training.export import export_model

    store = tmp_path / "store"
    plain = export_model(tmp_path, "tinyca", "1", store=store)
    wide = export_model(tmp_path, "tinyca", "2", store=store, label_variation_scale=1.5)
    assert json.loads(wide.file("config").read_text())["label_variation_scale"] == 1.5
    assert json.loads(plain.file("config").read_text())["label_variation_scale"] == 1.0
    card = ModelCard.model_validate(wide.card())
    assert card.architecture.label_variation_scale == 1.5
    assert ModelCard.model_validate(plain.card()).architecture.label_variation_scale == 1.0
    assert "Label variation scale 1.5: the spread of the drawn label embedding" in (
        wide.file("card_markdown").read_text()
    )
    assert "label variation scale: 1.5" in summary(card.model_dump(mode="json"))
    z = latents_for(3, range(4), cfg.latent_dim)
    labels = np.zeros((4, len(cfg.label_names)), np.float32)
    labels[:, 2] = 1.0
    drawn = [
        ort.InferenceSession(str(m.file("onnx"))).run(None, {"z": z, "labels": labels})[0]
        for m in (plain, wide)
    ]
    assert np.abs(drawn[0] - drawn[1]).max() > 1e-3  # baked into the graph
    opts = EvalOptions(checks=("collapse",), epochs=1, collapse_latents=6, cache=False)
    trial = evaluate_model(
        None, data_dir, opts, generator_dir=tmp_path / "generator", label_variation_scale=1.5,
        out_dir=tmp_path / "trial", progress=lambda _: None,
    )  # fmt: skip
    assert trial["label_variation_scale"] == 1.5
    assert json.loads((tmp_path / "trial" / "evaluation.json").read_text())["label_variation_scale"] == 1.5
