"""`thorax evaluate`: each check on cases with a known answer, and what the command writes."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from thoraxclient.model_card import ModelCard

from thorax import cards
from thorax.errors import UserError
from thorax.labels import NIH_LABELS
from thorax.store import open_model
from training import classifier as clf
from training.data import RadiographSet, describe_data
from training.evaluate import (
    CHECKS,
    NO_FINDING,
    CohortData,
    EvalOptions,
    MsSsimIndex,
    SsimIndex,
    as_loaded,
    collapse,
    controllability,
    evaluate_model,
    memorisation,
    nearest,
    pool_to,
    real_score_gap,
    real_spread,
    real_trained_classifier,
    similarity_index,
    site_of,
    train_on_synthetic,
    two_sample_by_side,
    two_sample_test,
)


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


def test_ssim_blur_is_the_gaussian_window_slid_over_valid_positions(splits) -> None:
    """The banded-matrix blur against conv2d with the 11-tap window, and SSIM of real images against
    a direct computation of the formula with that conv2d (the memorisation check's numbers)."""
    from training.evaluate import C1, C2, SSIM_SIGMA, SSIM_WINDOW, _blur

    x = torch.arange(SSIM_WINDOW, dtype=torch.float32) - SSIM_WINDOW // 2
    g = torch.exp(-(x**2) / (2 * SSIM_SIGMA**2))
    g = (g / g.sum()).view(1, 1, 1, -1)

    def conv_blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, g), g.transpose(-1, -2))

    train, _ = splits
    refs = train.images_at(32)[:12]
    assert _blur(refs).shape == (12, 1, 22, 22)
    assert torch.allclose(_blur(refs), conv_blur(refs), atol=1e-6)
    image = refs[5:6]
    mu_x, mu = conv_blur(image), conv_blur(refs)
    var_x, var = conv_blur(image**2) - mu_x**2, conv_blur(refs**2) - mu**2
    cov = conv_blur(refs * image) - mu * mu_x
    luminance = (2 * mu * mu_x + C1) / (mu**2 + mu_x**2 + C1)
    direct = (luminance * (2 * cov + C2) / (var + var_x + C2)).mean((1, 2, 3))
    structure = ((2 * cov + C2) / (var + var_x + C2)).mean((1, 2, 3))
    index = SsimIndex(refs)
    assert torch.allclose(index.ssim(image[0], chunk=5), direct, atol=1e-5)
    assert torch.allclose(index.ssim(image[0], structure_only=True), structure, atol=1e-5)


def test_a_generator_that_returns_training_images_is_flagged(splits) -> None:
    train, heldout = splits
    reals = train.images_at(32)

    def copier(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # "generates" training images
        return reals[(z[:, 0].abs() * 1000).long() % len(reals)]

    result, figure = memorisation(copier, 8, train, heldout, 32, count=40, seed=1)
    assert result["flagged"] == 40 and result["generated_vs_train"]["median"] == pytest.approx(1.0, abs=1e-4)
    assert result["threshold_real_p99_9"] < 0.999
    assert figure.size == (4 * 34 + 2, 32 * 34 + 2)  # 32 rows: generated + 3 nearest, 32 px tiles
    assert len(result["flagged_examples"]) == 40  # every flagged image is listed
    lo, hi = result["flagged_fraction_interval_95"]
    assert hi == 1.0 and lo == pytest.approx(0.025 ** (1 / 40), abs=1e-4)  # 40 of 40: exact lower bound
    assert 0 < result["heldout_flagged_fraction"] <= 0.05  # the held-out images' own share over the threshold
    assert result["below_heldout_min_fraction"] == result["below_heldout_p1_fraction"] == 0.0  # copies

    def noise(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # nothing like a radiograph
        return torch.rand(len(z), 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1

    result, _ = memorisation(noise, 8, train, heldout, 32, count=20, seed=1)
    assert (
        result["flagged"] == 0 and result["generated_vs_train"]["max"] < result["heldout_vs_train"]["median"]
    )
    assert result["flagged_fraction_interval_95"] == [0.0, round(1 - 0.025 ** (1 / 20), 4)]
    assert result["below_heldout_min_fraction"] == 1.0  # noise is less like a radiograph than any real one


def test_the_nearest_match_search_reports_progress_without_changing_its_answer(splits) -> None:
    """The memorisation check of 3,000 images at 128 px takes minutes: `nearest` says how far it is."""
    train, _ = splits
    refs = train.images_at(32)
    index = SsimIndex(refs)
    seen: list[int] = []
    scores, idx = nearest(index, refs[:7], progress=seen.append, every=2)
    assert seen == [2, 4, 6]  # not after the last image: the caller reports the result
    quiet_scores, quiet_idx = nearest(index, refs[:7])
    assert np.array_equal(scores, quiet_scores) and np.array_equal(idx, quiet_idx)
    assert (idx[:, 0] == np.arange(7)).all()  # each training image is its own nearest match


def test_ms_ssim_is_used_from_176_px_and_finds_copies(data_dir: Path) -> None:
    train = RadiographSet(data_dir, 176, NIH_LABELS, "train", limit=40)
    heldout = RadiographSet(data_dir, 176, NIH_LABELS, "test", limit=20)
    refs = train.images_at(176)
    index = similarity_index(refs)
    assert isinstance(index, MsSsimIndex) and isinstance(similarity_index(refs[:, :, :128, :128]), SsimIndex)
    scores = index.ssim(refs[3])
    assert scores[3].item() == pytest.approx(1.0, abs=1e-4) and (np.delete(scores.numpy(), 3) < 0.99).all()
    with pytest.raises(ValueError, match="176"):
        MsSsimIndex(refs[:, :, :160, :160])

    def copier(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return refs[(z[:, 0].abs() * 1000).long() % len(refs)]

    result, _ = memorisation(copier, 8, train, heldout, 176, count=6, seed=1)
    assert result["metric"] == "MS-SSIM" and result["flagged"] == 6


@pytest.fixture(scope="module")
def small_splits(data_dir: Path) -> dict[str, RadiographSet]:
    return {
        s: RadiographSet(data_dir, 16, NIH_LABELS, s, limit=n) for s, n in (("train", 400), ("val", 120))
    } | {"test": RadiographSet(data_dir, 16, NIH_LABELS, "test")}


def test_two_sample_test_is_near_chance_for_one_distribution_and_sure_for_two(small_splits) -> None:
    reals = small_splits["train"].images_at(16)
    opts = EvalOptions(epochs=4, bootstrap=500)
    same = two_sample_test(reals[0:400:2], reals[1:400:2], opts)  # interleaved: the table is sorted by source
    assert 0.35 <= same["accuracy"] <= 0.65 and same["auc_low"] < 0.5 < same["auc_high"]
    noise = torch.rand(200, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    apart = two_sample_test(reals[:200], noise, opts)
    assert apart["accuracy"] >= 0.95 and apart["auc"] >= 0.98


def test_the_two_sample_test_by_side_finds_where_the_giveaway_lies(small_splits) -> None:
    """Real images against other real images with a one-pixel checkerboard added: told apart at 16 px,
    not once both are pooled to 8 px (2x2 pooling cancels the checkerboard exactly), the small
    classifier's smallest input."""
    reals = small_splits["train"].images_at(16)
    checker = (torch.arange(16).view(-1, 1) + torch.arange(16).view(1, -1)) % 2 * 0.6 - 0.3  # +-0.3
    opts = EvalOptions(epochs=4, bootstrap=500)
    real, marked = reals[0:400:2], reals[1:400:2] + checker
    assert two_sample_test(real, marked, opts)["auc"] >= 0.95
    by_side = two_sample_by_side(real, marked, opts)
    assert list(by_side) == ["8"]
    assert all(0.35 <= r["accuracy"] <= 0.65 and r["auc"] < 0.75 for r in by_side.values()), by_side


def test_generated_images_meet_the_judge_resized_as_real_radiographs_are_loaded(data_dir: Path) -> None:
    """`as_loaded` brings 32 px images to 16 px as PIL loads an 8-bit radiograph (Lanczos), not as their
    area average; at the judge's own side it leaves the images as they are."""
    at32 = RadiographSet(data_dir, 32, NIH_LABELS, "train", limit=40)
    pixels = at32.pixels[:, 0].numpy()  # [40, 32, 32] uint8
    lanczos = np.stack([np.asarray(Image.fromarray(p).resize((16, 16), Image.LANCZOS)) for p in pixels])
    expected = torch.from_numpy(lanczos).float().unsqueeze(1) / 127.5 - 1  # [40, 1, 16, 16]
    images = at32.images_at(32)
    loaded = as_loaded(images, 16)
    assert loaded.shape == (40, 1, 16, 16) and loaded.dtype == torch.float32
    assert float((loaded - expected).abs().max()) < 1e-6
    assert float((pool_to(images, 16) - expected).abs().max()) * 127.5 >= 4  # area pooling is another filter
    assert as_loaded(images, 32) is images


def test_a_generator_that_returns_the_training_set_gives_a_synthetic_over_real_ratio_of_one(
    small_splits,
) -> None:
    train, val, test = small_splits["train"], small_splits["val"], small_splits["test"]
    opts = EvalOptions(epochs=2, bootstrap=300)
    names = list(NIH_LABELS)
    reals = train.images_at(16)
    real = clf.train_classifier(reals, train.labels, val.images_at(16), val.labels, epochs=2, seed=0)
    # "synthetic" images that are the training images with their own labels: the same classifier results
    result, _ = train_on_synthetic(names, real, train.labels, reals.clone(), val, test, 16, opts, print)
    assert result["labels_reported"], "the test split has labels with enough positives"
    assert set(result["ratio_synthetic_over_real"].values()) == {1.0}
    assert result["real_trained"] == result["synthetic_trained"]
    too_few = result["labels_with_too_few_test_positives"]
    assert all(count < opts.min_positives for count in too_few.values()) and "Hernia" in too_few
    for name in result["labels_reported"]:
        entry = result["real_trained"][name]
        assert entry["low"] <= entry["auc"] <= entry["high"] and entry["positives"] >= opts.min_positives


class _Brightness(torch.nn.Module):
    """A 'classifier' whose every logit is 10x the mean brightness: monotone in what the generator draws."""

    def __init__(self, outputs: int) -> None:
        super().__init__()
        self.outputs = outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 10 * x.mean(dim=(1, 2, 3)).unsqueeze(1).expand(-1, self.outputs)


def test_the_sweep_gives_a_rank_correlation_of_one_for_a_monotone_response() -> None:
    names = list(NIH_LABELS)

    def brighter(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # label value -> brightness
        base = 0.01 * z[:, :1, None, None].expand(-1, 1, 8, 8)
        return base + labels.sum(1).view(-1, 1, 1, 1) - 0.5

    opts = EvalOptions(sweep_steps=6, sweep_latents=4)
    result = controllability(brighter, 8, names, _Brightness(len(names)), 8, opts)
    assert result["values"] == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    for entry in result["labels"].values():
        assert entry["spearman_mean_score"] == 1.0 and entry["spearman_per_latent_mean"] == 1.0
        assert entry["score_at_1"] > entry["score_at_0"] and entry["sign"] == "+"
        assert entry["score_change"] > 0.9  # sigmoid(10 * 0.5) - sigmoid(-10 * 0.5)
    assert (result["labels_rising"], result["labels_falling"]) == (14, 0) and result["falling"] == []

    def darker(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # every label darkens the image
        return 0.01 * z[:, :1, None, None].expand(-1, 1, 8, 8) - labels.sum(1).view(-1, 1, 1, 1) + 0.5

    result = controllability(darker, 8, names, _Brightness(len(names)), 8, opts)
    assert (result["labels_rising"], result["labels_falling"]) == (0, 14) and result["falling"] == names
    assert {e["sign"] for e in result["labels"].values()} == {"-"}

    def flat(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # ignores the labels entirely
        return 0.01 * z[:, :1, None, None].expand(-1, 1, 8, 8)

    ignored = controllability(flat, 8, names, _Brightness(len(names)), 8, opts)
    assert all(math.isnan(e["spearman_mean_score"]) for e in ignored["labels"].values())


class _Pixels(torch.nn.Module):
    """A 'classifier' whose features are the image's 4x4 area means: distances are pixel distances."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, 4).flatten(1)  # [N, 16]


def test_the_collapse_detector_gives_zero_when_the_latent_is_ignored_and_one_for_real_images(
    small_splits,
) -> None:
    train, test = small_splits["train"], small_splits["test"]
    names = list(NIH_LABELS)
    reals = torch.cat([train.images_at(16), test.images_at(16)])
    real_labels = torch.cat([train.labels, test.labels])
    positive = real_labels >= 0.5
    opts = EvalOptions(collapse_latents=64)

    def fixed(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # one image per label vector
        return reals[labels.argmax(1) + 3 * labels.sum(1).long()]

    spread = real_spread(names, _Pixels(), reals, real_labels, train.labels)
    ignored = collapse(fixed, 8, names, _Pixels(), 16, spread, opts)
    rated = {n: v for n, v in ignored["labels"].items() if v["ratio"] is not None}
    assert NO_FINDING in rated and len(rated) >= 10
    assert {v["ratio"] for v in rated.values()} == {0.0} and ignored["min_ratio"] == 0.0
    assert set(ignored["labels_below_goal"]) == set(ignored["labels_judged"])
    assert ignored["labels"][NO_FINDING]["real_images"] == int((~positive.any(1)).sum())
    assert ignored["labels"]["Effusion"]["train_images"] == int((train.labels[:, 2] >= 0.5).sum())

    def copier(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # real images with that label
        picked = []
        for latent, vector in zip(z, labels, strict=True):
            rows = torch.nonzero(positive[:, vector.argmax()] if vector.sum() else ~positive.any(1))[:, 0]
            picked.append(reals[rows[int(latent[0].abs() * 1e6) % len(rows)]])
        return torch.stack(picked)

    alike = collapse(copier, 8, names, _Pixels(), 16, spread, opts)
    for name in (NO_FINDING, "Infiltration", "Effusion"):
        entry = alike["labels"][name]
        assert entry["real_images"] >= 30 and 0.75 <= entry["ratio"] <= 1.25, (name, entry)

    # the yardstick: real images with the label alone, the generated side's label vector
    alone = positive[:, 2] & (positive.sum(1) == 1)
    effusion = spread["labels"]["Effusion"]
    assert effusion["alone_images"] == int(alone.sum()) >= 10
    assert alike["labels"]["Effusion"]["real_alone_ratio"] == round(
        effusion["alone_distance"] / effusion["distance"], 4
    )
    assert alike["labels"][NO_FINDING]["real_alone_ratio"] == 1.0  # no finding is alone by definition

    def alone_copier(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # real images, label alone
        picked = []
        for latent, vector in zip(z, labels, strict=True):
            wanted = (
                positive[:, vector.argmax()] & (positive.sum(1) == 1) if vector.sum() else ~positive.any(1)
            )
            rows = torch.nonzero(wanted)[:, 0]
            picked.append(reals[rows[int(latent[0].abs() * 1e6) % len(rows)]])
        return torch.stack(picked)

    lone = collapse(alone_copier, 8, names, _Pixels(), 16, spread, opts)["labels"]["Effusion"]
    assert abs(lone["ratio"] - lone["real_alone_ratio"]) <= 0.2, lone


def test_the_real_trained_classifier_is_cached_and_reused(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("THORAX_CACHE_DIR", str(tmp_path / "cache"))
    opts = EvalOptions(epochs=1, seed=3)

    def cohort() -> CohortData:
        return CohortData(data_dir, 16, NIH_LABELS, (0.8, 0.1, 0.1), 0, ("nih_",))

    data = cohort()
    first, info = real_trained_classifier(data, 8, opts, lambda _: None)
    assert info["cached"] is False and Path(info["file"]).is_file() and set(data.splits) == {"train", "val"}
    assert {site_of(p) for p in data.split("train").patient_ids} == {"nih_"}
    images = data.split("val").images_at(8)

    def no_training(*args, **kwargs):
        raise AssertionError("the cached classifier should have been used")

    with monkeypatch.context() as patch:
        patch.setattr(clf, "train_classifier", no_training)
        again = cohort()
        second, info = real_trained_classifier(again, 8, opts, lambda _: None)
        assert info["cached"] is True and again.splits == {}  # no image was loaded for it
    np.testing.assert_array_equal(clf.predict(second.model, images), clf.predict(first.model, images))
    assert second.best_epoch == first.best_epoch

    other, info = real_trained_classifier(cohort(), 8, EvalOptions(epochs=1, seed=4), lambda _: None)
    assert info["cached"] is False  # another seed is another classifier
    assert len(list((tmp_path / "cache" / "classifiers").glob("*.safetensors"))) == 2


def test_a_shipped_judge_is_used_on_another_machine_instead_of_training_one(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The judge trained on one machine is shipped (keyed without the data folder's path) and, on a
    machine whose cache is empty, used as it is: the same scores, no training."""
    from training import classifier_cache

    monkeypatch.setattr(classifier_cache, "SHIPPED_JUDGES", tmp_path / "judges")
    monkeypatch.setenv("THORAX_CACHE_DIR", str(tmp_path / "here"))
    opts = EvalOptions(epochs=1, seed=5)
    data = CohortData(data_dir, 16, NIH_LABELS, (0.8, 0.1, 0.1), 0, ("nih_",))
    trained, info = real_trained_classifier(data, 8, opts, lambda _: None)
    assert info["cached"] is False and info["file"]
    key = json.loads(Path(info["file"]).with_suffix(".json").read_text())["key"]
    shipped = classifier_cache.ship_classifier(classifier_cache.cache_root(), key)
    assert (
        shipped.parent == tmp_path / "judges"
        and "data" not in json.loads(shipped.with_suffix(".json").read_text())["key"]
    )
    assert (
        classifier_cache.shipped_path({**key, "data": "/elsewhere/cxr256"}) == shipped
    )  # the path is not in its name

    monkeypatch.setenv("THORAX_CACHE_DIR", str(tmp_path / "there"))  # another machine: an empty cache

    def no_training(*args, **kwargs):
        raise AssertionError("the shipped judge should have been used")

    messages: list[str] = []
    with monkeypatch.context() as patch:
        patch.setattr(clf, "train_classifier", no_training)
        judge, info = real_trained_classifier(
            CohortData(data_dir, 16, NIH_LABELS, (0.8, 0.1, 0.1), 0, ("nih_",)), 8, opts, messages.append
        )
    assert info["cached"] is True and info["shipped"] == shipped.name and "shipped judge" in messages[-1]
    images = data.split("val").images_at(8)
    np.testing.assert_array_equal(clf.predict(judge.model, images), clf.predict(trained.model, images))
    # --no-cache trains anew, whatever is shipped
    _, info = real_trained_classifier(data, 8, EvalOptions(epochs=1, seed=5, cache=False), lambda _: None)
    assert info["cached"] is False


def _adult_generator_folder(tiny_run: Path, tmp_path: Path) -> Path:
    """A copy of the tiny run's generator folder, marked as a model of the NIH adult cohort."""
    folder = tmp_path / "generator"
    shutil.copytree(tiny_run / "generator", folder)
    config = json.loads((folder / "generator.json").read_text())
    config.update({"patient_prefixes": ["nih_"], "cohort": "NIH adults"})
    (folder / "generator.json").write_text(json.dumps(config))
    return folder


def test_the_quick_check_on_a_runs_generator_folder_judges_against_its_cohort(
    tiny_run: Path, tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("THORAX_CACHE_DIR", str(tmp_path / "cache"))
    folder = _adult_generator_folder(tiny_run, tmp_path)
    opts = EvalOptions(
        checks=("sweep", "collapse"), epochs=1, sweep_steps=3, sweep_latents=2, collapse_latents=6
    )
    lines: list[str] = []
    evaluation = evaluate_model(None, data_dir, opts, generator_dir=folder, progress=lines.append)
    saved = json.loads((folder / "evaluation.json").read_text())
    assert saved["cohort"]["name"] == "NIH adults" and saved["cohort"]["patient_prefixes"] == ["nih_"]
    assert set(saved["cohort"]["images"]) == {"train", "val", "test"}  # val: the classifier was trained
    assert all(list(sites) == ["nih_"] for sites in saved["cohort"]["images"].values())
    nih = {
        s: len(RadiographSet(data_dir, 16, NIH_LABELS, s, patient_prefixes=("nih_",)))
        for s in ("train", "test")
    }
    found = saved["collapse"]["labels"]
    assert found[NO_FINDING]["real_images"] + found["Effusion"]["real_images"] <= nih["train"] + nih["test"]
    assert sum(saved["cohort"]["images"]["test"].values()) == nih["test"]
    assert (
        len(saved["controllability"]["labels"]) == 14 and 0 <= saved["controllability"]["labels_rising"] <= 14
    )
    assert len(saved["controllability"]["real_reference"]["labels"]) == 14
    assert saved["controllability"]["real_reference"]["images"] == nih["test"]
    recorded = saved["real_classifier"]["file"]  # within the cache, not a path on this machine
    assert recorded.startswith("classifiers/") and not Path(recorded).is_absolute()
    assert "classifier_checks" not in saved and "memorisation" not in saved
    assert not (folder / "model_card.json").exists()  # a run's folder has no card to fill
    assert any(line.startswith("sweep: ") for line in lines) and any("collapse: " in x for x in lines)
    assert evaluation["real_classifier"]["cached"] is False
    again = evaluate_model(None, data_dir, opts, generator_dir=folder, progress=lambda _: None)
    assert again["real_classifier"]["cached"] is True
    assert (
        again["cohort"]["images"] == {}
    )  # the real spread was cached beside the classifier: no image loaded
    assert (
        again["collapse"] == evaluation["collapse"]
        and again["controllability"] == evaluation["controllability"]
    )


def test_the_command_takes_a_stored_model_or_a_generator_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from thorax import cli

    assert cli.main(["evaluate", "tiny/1", "--generator", str(tmp_path)]) == 2
    assert "give a stored model or --generator DIR, not both" in capsys.readouterr().err
    assert cli.main(["evaluate", "--generator", str(tmp_path), "--checks", "sweep,collapse"]) == 2
    assert "not a generator folder" in capsys.readouterr().err


def test_a_trial_at_another_guidance_goes_into_its_own_folder_and_leaves_the_model_alone(
    tiny_store: Path,
    tmp_path: Path,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`thorax evaluate tiny/1 --label-guidance input=2 --out DIR`: the quick check of the model drawn
    at another strength, recorded in DIR; the stored model's files, record and card stay as they were.
    Without --out such a trial is refused, as is a stored model's folder given as a generator folder."""
    from thorax import cli

    monkeypatch.setenv("THORAX_CACHE_DIR", str(tmp_path / "cache"))
    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    sums = (store / "tiny" / "1" / "SHA256SUMS").read_bytes()
    opts = EvalOptions(
        checks=("sweep", "collapse"), epochs=1, sweep_steps=3, sweep_latents=2, collapse_latents=6
    )
    out = tmp_path / "trial"
    quiet = {"progress": lambda _: None}
    plain = evaluate_model("tiny/1", data_dir, opts, store=store, out_dir=tmp_path / "plain", **quiet)
    trial = evaluate_model(
        "tiny/1", data_dir, opts, store=store, label_guidance={"input": 2.0}, out_dir=out, **quiet
    )
    saved = json.loads((out / "evaluation.json").read_text())
    assert saved["label_guidance"] == {"input": 2.0} == trial["label_guidance"] and saved["model"] == "tiny/1"
    assert plain["label_guidance"] == 1.0
    assert trial["controllability"] != plain["controllability"]  # the labels were drawn differently
    assert (store / "tiny" / "1" / "SHA256SUMS").read_bytes() == sums
    assert ModelCard.model_validate(open_model("tiny/1", store).card()).evaluation is None  # card as it was
    assert not (store / "tiny" / "1" / "evaluation.json").exists()

    with pytest.raises(UserError, match="give --out DIR"):
        evaluate_model("tiny/1", data_dir, opts, store=store, label_guidance=2.0)
    with pytest.raises(UserError, match="give --out"):
        evaluate_model("tiny/1", data_dir, opts, store=store, label_variation_scale=1.5)
    with pytest.raises(UserError, match="--label-variation-scale: .*no label_variation"):
        evaluate_model(
            "tiny/1", data_dir, opts, store=store, label_variation_scale=1.5, out_dir=tmp_path / "x"
        )
    with pytest.raises(UserError, match="is a stored model's folder"):
        evaluate_model(None, data_dir, opts, generator_dir=store / "tiny" / "1")
    with pytest.raises(UserError, match="labels enter at the input only"):
        evaluate_model(
            "tiny/1", data_dir, opts, store=store, label_guidance={"8": 2.0}, out_dir=tmp_path / "x"
        )
    assert not (tmp_path / "x").exists()
    assert (store / "tiny" / "1" / "SHA256SUMS").read_bytes() == sums
    args = ["evaluate", "tiny/1", "--store", str(store), "--label-guidance", "0"]
    assert cli.main(args) == 2  # argparse refuses the value itself
    assert "--label-guidance" in capsys.readouterr().err
    assert cli.main([*args[:-1], "16=2"]) == 2  # no --out
    assert "give --out DIR" in capsys.readouterr().err
    assert cli.main(["evaluate", "tiny/1", "--store", str(store), "--label-variation-scale", "0"]) == 2
    assert "--label-variation-scale" in capsys.readouterr().err


def test_the_command_knows_the_same_checks() -> None:
    from thorax import cli

    assert cli.CHECKS == CHECKS


def test_evaluate_writes_results_figures_and_the_card(
    tiny_store: Path, tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("THORAX_CACHE_DIR", str(tmp_path / "cache"))  # not the user's cache
    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    opts = EvalOptions(count=30, epochs=1, bootstrap=200, tstr_repeats=2)
    evaluation = evaluate_model("tiny/1", data_dir, opts, store=store, progress=lambda _: None)
    model = open_model("tiny/1", store)  # still verifies: the checksums were rewritten
    saved = json.loads((model.path / "evaluation.json").read_text())
    assert saved["memorisation"]["generated"] == 30 == evaluation["memorisation"]["generated"]
    assert saved["memorisation"]["heldout_real"] > 100  # the patient-disjoint test split
    checks = saved["classifier_checks"]
    tstr = checks["train_on_synthetic_test_on_real"]
    assert tstr["train_images"] > 1000
    # two repeats at seeds 0 and 1, each with its own real-trained classifier (both now in the cache);
    # the reported ratio is their mean
    assert [r["seed"] for r in tstr["repeats"]] == [0, 1]
    ratios = [r["mean_ratio"] for r in tstr["repeats"]]
    assert tstr["mean_ratio"] == pytest.approx(np.mean(ratios), abs=1e-4)
    assert tstr["mean_ratio_range"] == [min(ratios), max(ratios)]
    assert tstr["mean_ratio_sd"] == pytest.approx(np.std(ratios, ddof=1), abs=1e-4)
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 2
    assert 0 <= checks["two_sample_test"]["accuracy"] <= 1
    assert checks["feature_distances"]["frechet_train_vs_test"] >= 0
    assert len(checks["label_correlation"]["order"]) == 14
    sites = checks["per_site"]["sites"]
    assert {"nih_", "kermany_"} <= set(sites) and saved["cohort"]["name"] == "all patients"
    assert sum(s["test_images"] for s in sites.values()) == saved["memorisation"]["heldout_real"]
    kermany = sites["kermany_"]["train_on_synthetic_test_on_real"]
    assert "Pneumonia" in kermany["labels_reported"]  # Pneumonia against the children without it
    assert "Effusion" in sites["nih_"]["label_fidelity"]["per_label"]
    assert saved["controllability"]["labels_rising"] + saved["controllability"]["labels_falling"] <= 14
    assert len(saved["collapse"]["labels"]) == 15  # no finding and each label
    assert set(saved["timings_s"]) >= {"memorisation_s", "classifier_real_s", "two_sample_s", "pictures_s"}
    card = ModelCard.model_validate(model.card())
    assert card.evaluation["memorisation_flagged"].endswith("of 30")
    assert card.evaluation["two_sample_accuracy"] == checks["two_sample_test"]["accuracy"]
    assert card.evaluation["collapse_min_ratio"] == saved["collapse"]["min_ratio"]
    assert card.evaluation["sweep_labels_rising_0.15"].endswith("of 14")
    assert card.evaluation["cohort"] == "all patients"
    assert card.evaluation["tstr_repeats"] == 2 and card.evaluation["tstr_mean_ratio"] == tstr["mean_ratio"]
    markdown = (model.path / "model_card.md").read_text()
    assert "| collapse min ratio |" in markdown
    assert f"| tstr mean ratio sd | {tstr['mean_ratio_sd']} |" in markdown
    shown = cards.summary(card.model_dump())
    assert f"ratio {tstr['mean_ratio']:.3f} ± {tstr['mean_ratio_sd']:.3f} over 2 repeats" in shown
    for name in saved["figures"]:
        with Image.open(model.path / name) as im:
            assert im.width > 16 and im.height > 16
    with Image.open(model.path / "eval_transitions.png") as im:
        assert im.size == (4 * 18 + 2, 14 * 18 + 2)  # 14 labels x 4 values of 16 px
    with Image.open(model.path / "eval_transitions.gif") as im:
        assert im.n_frames == 20


def test_evaluate_runs_only_the_checks_asked_for(tiny_store: Path, tmp_path: Path, data_dir: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    evaluation = evaluate_model(
        "tiny/1", data_dir, EvalOptions(checks=("pictures",)), store=store, progress=lambda _: None
    )
    assert "memorisation" not in evaluation and "classifier_checks" not in evaluation
    assert "collapse" not in evaluation and evaluation["cohort"]["images"] == {}  # no real image loaded
    assert "eval_difference_maps.png" in evaluation["figures"]
    saved = (store / "tiny" / "1" / "evaluation.json").read_text()
    assert json.loads(saved)["data"] == describe_data(data_dir, NIH_LABELS) == evaluation["data"]
    assert str(data_dir) not in saved and str(data_dir.resolve()) not in saved  # no path of this machine
    with pytest.raises(ValueError, match="unknown check"):
        evaluate_model("tiny/1", data_dir, EvalOptions(checks=("speed",)), store=store)


def test_the_data_is_described_by_name_count_and_checksum_wherever_it_lies(
    data_dir: Path, tmp_path: Path
) -> None:
    table = data_dir / "labels.csv"
    copy = tmp_path / "elsewhere" / data_dir.resolve().name  # only the label table: no image is read
    copy.mkdir(parents=True)
    shutil.copy(table, copy / "labels.csv")
    described = describe_data(data_dir, NIH_LABELS)
    assert describe_data(copy, NIH_LABELS) == described
    assert described["images"] == len(table.read_text().splitlines()) - 1  # rows, the header aside
    assert described["label_table_sha256"] == hashlib.sha256(table.read_bytes()).hexdigest()
    (copy / "labels.csv").write_text(table.read_text().replace(",1,", ",0,", 1))  # one label changed
    assert describe_data(copy, NIH_LABELS)["label_table_sha256"] != described["label_table_sha256"]


def test_both_classifier_architectures_train_and_give_features(small_splits) -> None:
    train = small_splits["train"]
    images, labels = F.interpolate(train.images_at(16)[:32], size=32), train.labels[:32]
    with pytest.raises(UserError, match="32 px"):
        clf.train_classifier(train.images_at(16)[:8], labels[:8], architecture="densenet121")
    for architecture, dim in (("small", 128), ("densenet121", 1024)):
        result = clf.train_classifier(images, labels, architecture=architecture, epochs=1, batch=16)
        scores = clf.predict(result.model, images)
        assert scores.shape == (32, 14) and ((scores >= 0) & (scores <= 1)).all()
        assert clf.features(result.model, images).shape == (32, dim)


def test_the_real_reference_of_the_sweep_is_the_score_gap_between_images_with_and_without_a_label() -> None:
    names = ["Effusion", "Mass"]
    images = torch.tensor([0.3, 0.3, -0.3, -0.3, -0.3]).view(-1, 1, 1, 1).expand(-1, 1, 8, 8)
    labels = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    found = real_score_gap(names, _Brightness(len(names)), images, labels)
    brighter, darker = torch.sigmoid(torch.tensor(3.0)).item(), torch.sigmoid(torch.tensor(-3.0)).item()
    effusion = found["labels"]["Effusion"]
    assert effusion["positives"] == 2 and effusion["gap"] == round(brighter - darker, 4)
    mass = found["labels"]["Mass"]  # no image has it: every image is a negative, and there is no gap
    everyone = round((2 * brighter + 3 * darker) / 5, 4)
    assert mass == {"positives": 0, "positive_mean": None, "negative_mean": everyone, "gap": None}
    assert (found["labels_reaching_rise"], found["reaching"], found["images"]) == (1, ["Effusion"], 5)


def test_a_balanced_judge_weighs_both_classes_of_each_label_alike(small_splits) -> None:
    labels = torch.zeros(64, 3)
    labels[:4, 0] = 1.0  # rare: 4 of 64
    labels[:32, 1] = 1.0  # half
    weights = clf.balanced_weights(labels)  # the third label has no positives
    assert weights.tolist() == [15.0, 1.0, 1.0]
    images = small_splits["train"].images_at(16)[:64]
    per_image = F.binary_cross_entropy_with_logits(
        torch.zeros(64, 3), labels, pos_weight=weights, reduction="none"
    )  # at logit 0 every image costs log 2, times the weight for a positive
    for k in (0, 1):  # the positives of each label weigh as much as its negatives
        positive = labels[:, k] == 1
        assert torch.isclose(per_image[positive, k].sum(), per_image[~positive, k].sum())
    result = clf.train_classifier(images, labels, epochs=1, batch=16, balanced=True)
    assert clf.predict(result.model, images).shape == (64, 3)


def test_a_model_larger_than_the_judges_input_meets_the_judge_of_a_model_of_that_side(
    tiny_run: Path, tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 16 px generator judged at 8 px uses the classifier trained on real images loaded at 8 px, the
    one an 8 px model is judged by, not one trained on 16 px images pooled down."""
    monkeypatch.setenv("THORAX_CACHE_DIR", str(tmp_path / "cache"))
    folder = _adult_generator_folder(tiny_run, tmp_path)
    assert json.loads((folder / "generator.json").read_text())["resolution"] == 16
    opts = EvalOptions(checks=("sweep",), epochs=1, sweep_steps=3, sweep_latents=2, classifier_px=8)
    evaluation = evaluate_model(None, data_dir, opts, generator_dir=folder, progress=lambda _: None)
    assert evaluation["real_classifier"]["cached"] is False and evaluation["real_classifier"]["input_px"] == 8
    at_8 = CohortData(data_dir, 8, tuple(NIH_LABELS), (0.8, 0.1, 0.1), 0, ("nih_",))
    _, info = real_trained_classifier(at_8, 8, opts, lambda _: None)
    assert info["cached"] is True and at_8.splits == {}  # the same cache entry: nothing trained or loaded
    assert (
        Path(info["file"]).relative_to(tmp_path / "cache").as_posix() == evaluation["real_classifier"]["file"]
    )
    assert len(list((tmp_path / "cache" / "classifiers").glob("*.safetensors"))) == 1
