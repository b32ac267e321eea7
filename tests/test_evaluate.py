"""`thorax evaluate`: the memorisation check on cases with a known answer, and what it writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from thoraxclient.model_card import ModelCard

from thorax.labels import NIH_LABELS
from thorax.store import open_model
from training.data import RadiographSet
from training.evaluate import SsimIndex, evaluate_model, memorisation


@pytest.fixture(scope="module")
def splits(data_dir: Path) -> tuple[RadiographSet, RadiographSet]:
    train = RadiographSet(data_dir, 32, NIH_LABELS, "train", limit=200)
    heldout = RadiographSet(data_dir, 32, NIH_LABELS, "test", limit=60)
    return train, heldout


def test_ssim_is_one_for_the_same_image_and_lower_for_others(splits) -> None:
    train, _ = splits
    refs = train.images_at(32)[:20]
    scores = SsimIndex(refs).ssim(refs[7])
    assert scores.shape == (20,)
    assert scores[7].item() == pytest.approx(1.0, abs=1e-5)
    assert int(scores.argmax()) == 7 and (np.delete(scores.numpy(), 7) < 0.999).all()
    noise = SsimIndex(torch.rand(3, 1, 32, 32) * 2 - 1).ssim(refs[0])
    assert (noise < 0.3).all()


def test_a_generator_that_returns_training_images_is_flagged(splits) -> None:
    train, heldout = splits
    reals = train.images_at(32)

    def copier(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # "generates" training images
        return reals[(z[:, 0].abs() * 1000).long() % len(reals)]

    result, figure = memorisation(copier, 8, train, heldout, 32, count=40, seed=1)
    assert result["flagged"] == 40 and result["generated_vs_train"]["median"] == pytest.approx(1.0, abs=1e-4)
    assert result["threshold_real_p99_9"] < 0.999
    assert figure.size == (4 * 34 + 2, 8 * 34 + 2)  # 8 rows: generated + 3 nearest, 32 px tiles

    def noise(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # nothing like a radiograph
        return torch.rand(len(z), 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1

    result, _ = memorisation(noise, 8, train, heldout, 32, count=20, seed=1)
    assert (
        result["flagged"] == 0 and result["generated_vs_train"]["max"] < result["heldout_vs_train"]["median"]
    )


def test_evaluate_writes_results_figures_and_the_card(
    tiny_store: Path, tmp_path: Path, data_dir: Path
) -> None:
    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    evaluation = evaluate_model("tiny/1", data_dir, count=30, store=store, progress=lambda _: None)
    model = open_model("tiny/1", store)  # still verifies: the checksums were rewritten
    saved = json.loads((model.path / "evaluation.json").read_text())
    assert saved["memorisation"]["generated"] == 30 == evaluation["memorisation"]["generated"]
    assert saved["memorisation"]["heldout_real"] > 100  # the patient-disjoint test split
    card = ModelCard.model_validate(model.card())
    assert card.evaluation["memorisation_flagged"].endswith("of 30")
    assert "train on synthetic, test on real" in card.evaluation["not_computed_yet"]
    for name in saved["figures"]:
        with Image.open(model.path / name) as im:
            assert im.width > 16 and im.height > 16
    with Image.open(model.path / "eval_transitions.png") as im:
        assert im.size == (4 * 18 + 2, 14 * 18 + 2)  # 14 labels x 4 values of 16 px
    with Image.open(model.path / "eval_transitions.gif") as im:
        assert im.n_frames == 20
