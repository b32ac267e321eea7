"""`thorax evaluate`: the paper's checks of a generator, written beside the model and into its card.

- **Memorisation** (Figure 2 I/J): for N generated images, the nearest training image by SSIM (MS-SSIM
  from 176 px up, where its five scales fit the 11-pixel window), next to the same statistic for
  held-out real images (the test split). Generated images above the real-vs-real 99.9th percentile are
  flagged and shown with their three nearest training images.
- **Classifier checks** (`training/classifier.py` trains the classifiers here, on the run's split):
  - train on synthetic, test on real: one classifier on the real training split, one on as many
    generated images with the same label vectors; per-label AUC on the real test split with bootstrap
    intervals, and the synthetic/real ratio. Labels with too few test positives are listed apart.
    Repeated at seeds seed, seed + 1, ... (3 by default: one run's ratio moves by about 0.05 with the
    seed); the ratio reported is the repeats' mean, with their standard deviation and range.
  - label fidelity: the real-trained classifier's AUC on generated images against their conditions.
  - per site: both of the above again within each cohort (patient id prefix: nih_, kermany_,
    ieee8023_), every label scored against negatives of the same cohort, so that a classifier that
    only tells children from adults does not pass for one that sees Pneumonia.
  - two-sample test: a classifier trained to tell real from generated, its held-out accuracy and AUC.
  - feature distances: Fréchet distance and KID between generated and real test images in the
    real-trained classifier's feature space, with real-train-vs-real-test as the floor.
  - label correlation matrix (Figure 7): generated images with one label drawn uniformly in 0..1,
    scored by the classifier, Pearson correlation per label pair, clustered; beside the same matrix for
    the real test images.
- **Sweep** (`sweep`, part of `classifier`): the controllability sweep: one latent, one label raised
  0 -> 1, the real-trained classifier's score for it, with Spearman's rank correlation; the score
  change and its sign per label, and how many labels rise by at least 0.15 and how many fall.
- **Collapse** (`collapse`, part of `classifier`): per label vector (no finding, and each label alone),
  generated images that differ only in latent, their mean pairwise distance in the real-trained
  classifier's feature space, over the same among the real images with that label (training and
  test split of the cohort). Near 0: the label replaced the latent (collapse by conditioning); near 1:
  as varied as real images with that label. Beside it, the same ratio for the real images with that
  label alone (the generated side's label vector): the yardstick for reading the goal.
- **Pictures**: transitions (one latent, one label 0 -> 0.3 -> 0.6 -> 1.0, every label; Figure 5) as
  PNG and GIF, difference maps (Figure 6), and a Cardiomegaly x Effusion grid (Figure S1).

The real images are those of the model's cohort (`patient_prefixes` in its generator.json; all
patients without it), on the run's patient split. The real-trained classifier is cached on disk
(`training/classifier_cache.py`), so `--checks sweep,collapse` on a second call costs only the
generated images: the quick check for judging variants during training, on a run's `generator/`
folder as well as on a stored model. Where the project ships the judge (`training/judges/`: the adult
cohort's, seeds 0 to 2, those the README's figures come from), an empty cache takes it from there
instead of training one, so that another machine measures with the same judge.

Every measurement is timed. Results go to `evaluation.json` and `eval_*.png|gif` in the model's folder;
for a stored model the card's `evaluation` section is filled and `SHA256SUMS` rewritten.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from thoraxclient.model_card import (
    NO_FINDING,
    ModelCard,
    describe_label_guidance,
    describe_label_variation_scale,
)

from thorax.errors import UserError
from thorax.latents import latents_for
from thorax.pictures import difference_row, heatmap, tile_grid
from thorax.store import StoredModel, open_model, store_root, write_sums
from training import classifier as clf
from training import classifier_cache
from training.checkpoint import load_generator
from training.data import RadiographSet, describe_data, find_label_table, resample
from training.export import card_markdown
from training.metrics import (
    binomial_interval,
    bootstrap_auc,
    cluster_order,
    frechet_distance,
    kernel_inception_distance,
    mean_pairwise_distance,
    pearson_matrix,
    roc_auc,
    spearman,
)
from training.networks import LabelGuidance, is_guided, level_of
from training.sample import grid_image, to_uint8

SSIM_WINDOW, SSIM_SIGMA = 11, 1.5
C1, C2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2  # images span [-1, 1]: a data range of 2
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, five scales
FIGURE_ROWS = 32  # flagged images drawn in eval_memorisation.png; evaluation.json lists every one
MS_SSIM_MIN_SIDE = 176  # from here on the coarsest scale (side / 16) still fits the 11-pixel window
CHECKS = ("memorisation", "classifier", "pictures", "sweep", "collapse")  # classifier runs the last two too
# Latent streams (seeds derived from the user's seed) so that no two checks share generated images.
STREAM_MEMORISATION, STREAM_SYNTHETIC, STREAM_SWEEP, STREAM_CORRELATION, STREAM_COLLAPSE = 0, 1, 2, 3, 4
SWEEP_RISE = 0.15  # issue 11's goal: >= 10 of 14 labels rise by this much from 0 to 1, none falls
COLLAPSE_GOAL, COLLAPSE_MIN_TRAIN = 0.8, 20  # diversity ratio >= 0.8 for labels with >= 20 training images

Generate = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (z, labels) -> images in [-1, 1]


@dataclass(frozen=True)
class EvalOptions:
    """What `thorax evaluate` measures, and how hard.

    Args:
        count:           generated images for the memorisation check. 3,000: at a good generator's rate
                         (about 0.67 %, one held-out image in 149) 1,000 images flag 6.7 +- 2.6, so a
                         count at one seed moved by several between seeds; 3,000 narrow that by sqrt(3).
        seed:            the user's seed; each check draws its latents from its own stream of it.
        checks:          any of memorisation, classifier, pictures, sweep, collapse (classifier includes
                         sweep and collapse).
        classifier:      classifier architecture: small (default) or densenet121 (needs MONAI).
        epochs:          training epochs of each classifier.
        classifier_px:   side of the classifiers' input (the model's resolution if smaller).
        bootstrap:       resamples of each bootstrap interval (10,000 in the paper).
        min_positives:   test positives a label needs to be reported with an AUC.
        sweep_steps:     values of a label in the controllability sweep (0 to 1).
        sweep_latents:   latents averaged in the sweep.
        correlation_images: generated images per label for the correlation matrix.
        collapse_latents: generated images per label vector in the collapse detector.
        cache:           reuse (and store) the real-trained classifier in the cache folder.
        balanced_judge:  train the real-trained classifier with each label's positives weighted by
                         negatives / positives (scores around 0.5, not near the prevalence); a second
                         yardstick for the sweep, reported as such. The other classifiers are unchanged.
        tstr_repeats:    repeats of train on synthetic, test on real; repeat k is that check as run with
                         seed + k (its own latents, classifiers and real-trained classifier). One repeat
                         moves by about 0.05 with the seed, so the reported ratio is their mean.
    """

    count: int = 3000
    seed: int = 0
    checks: tuple[str, ...] = CHECKS
    classifier: str = "small"
    epochs: int = 15
    classifier_px: int = 64
    bootstrap: int = 10_000
    min_positives: int = 5
    sweep_steps: int = 11
    sweep_latents: int = 16
    correlation_images: int = 100
    collapse_latents: int = 64
    cache: bool = True
    balanced_judge: bool = False
    tstr_repeats: int = 3


# ---- SSIM and MS-SSIM --------------------------------------------------------------------------
def _window(device: torch.device) -> torch.Tensor:
    x = torch.arange(SSIM_WINDOW, dtype=torch.float32, device=device) - SSIM_WINDOW // 2
    g = torch.exp(-(x**2) / (2 * SSIM_SIGMA**2))
    return g / g.sum()  # [W]


_BANDS: dict[tuple[int, str], torch.Tensor] = {}


def _band(n: int, device: torch.device) -> torch.Tensor:
    """The Gaussian window as a banded [n - W + 1, n] matrix: row i holds it at columns i..i+W-1, so
    that band @ column is the window slid along the column, valid positions only."""
    key = (n, str(device))
    if key not in _BANDS:
        w = _window(device)
        rows = n - SSIM_WINDOW + 1
        band = torch.zeros(rows, n, device=device)
        for i in range(rows):
            band[i, i : i + SSIM_WINDOW] = w
        _BANDS[key] = band
    return _BANDS[key]


def _blur(x: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian over [N, 1, H, W], valid region only (as in the reference SSIM), as two
    matrix products with banded matrices. conv2d with the 11-tap window gave the same values to 3e-7
    but fell off a cliff on this CPU as the images grew: 146 ms for 128 images of 128 px, against
    15 ms this way (7 and 2 ms at 64 px); it made the memorisation check of a 128 px model take
    over half an hour."""
    return _band(x.shape[-2], x.device) @ x @ _band(x.shape[-1], x.device).T


class SsimIndex:
    """Precomputed statistics of a set of reference images, for SSIM of any image against all of them."""

    def __init__(self, refs: torch.Tensor) -> None:
        self.refs = refs.float()  # [N, 1, H, W] in [-1, 1]
        self.mu = _blur(self.refs)
        self.var = _blur(self.refs**2) - self.mu**2
        self.mu_sq = self.mu**2

    def ssim(self, image: torch.Tensor, chunk: int = 64, structure_only: bool = False) -> torch.Tensor:
        """Mean SSIM of one image [1, H, W] against every reference: [N]. With `structure_only`, the
        mean of the contrast-structure term alone (what MS-SSIM takes at its finer scales).

        The references go in chunks: small temporaries are reused by the allocator, where whole-set ones
        were mapped and unmapped for every query (5x slower here: 368 vs 68 ms a query at 64 px). The
        maps are computed in place, one temporary fewer each (per query against 1,138 references, at
        64 / 128 px: 18 / 167 ms, where the conv2d blur and fresh temporaries took 61 / 1,440 ms; one
        thread, this CPU)."""
        x = image.float().unsqueeze(0)  # [1, 1, H, W]
        mu_x = _blur(x)
        var_x = _blur(x**2) - mu_x**2
        mu_x_sq = mu_x**2
        out = []
        for start in range(0, len(self.refs), chunk):
            refs, mu, var = (t[start : start + chunk] for t in (self.refs, self.mu, self.var))
            mu_mu_x = mu * mu_x
            value = _blur(refs * x).sub_(mu_mu_x).mul_(2).add_(C2)  # 2 cov + C2
            value.div_((var + var_x).add_(C2))  # the contrast-structure map
            if not structure_only:
                mu_sq = self.mu_sq[start : start + chunk]
                value.mul_(mu_mu_x.mul_(2).add_(C1).div_((mu_sq + mu_x_sq).add_(C1)))  # luminance
            out.append(value.mean(dim=(1, 2, 3)))
        return torch.cat(out)


class MsSsimIndex:
    """Multi-scale SSIM (Wang et al. 2003) of any image against a reference set, as the paper measures
    memorisation: contrast-structure at four scales and full SSIM at the fifth, halving each time."""

    def __init__(self, refs: torch.Tensor) -> None:
        if refs.shape[-1] < MS_SSIM_MIN_SIDE:
            raise ValueError(f"MS-SSIM needs images of at least {MS_SSIM_MIN_SIDE} px, got {refs.shape[-1]}")
        self.scales = []
        x = refs.float()
        for _ in MS_SSIM_WEIGHTS:
            self.scales.append(SsimIndex(x))
            x = F.avg_pool2d(x, 2)

    def ssim(self, image: torch.Tensor) -> torch.Tensor:
        x = image.float()  # [1, H, W]
        score = torch.ones(len(self.scales[0].refs))
        for k, (index, weight) in enumerate(zip(self.scales, MS_SSIM_WEIGHTS, strict=True)):
            last = k == len(MS_SSIM_WEIGHTS) - 1
            term = index.ssim(x, structure_only=not last).clamp(min=0)  # negative terms count as 0
            score = score * term**weight
            x = F.avg_pool2d(x.unsqueeze(0), 2)[0]
        return score


def similarity_index(refs: torch.Tensor) -> SsimIndex | MsSsimIndex:
    """MS-SSIM where the images are large enough for its five scales, else single-scale SSIM."""
    return MsSsimIndex(refs) if refs.shape[-1] >= MS_SSIM_MIN_SIDE else SsimIndex(refs)


def nearest(
    index: SsimIndex | MsSsimIndex,
    images: torch.Tensor,
    k: int = 3,
    progress: Callable[[int], None] | None = None,
    every: int = 500,
) -> tuple[np.ndarray, np.ndarray]:
    """For each image, its top-k similarity against the references and their indices: ([M, k], [M, k]).
    `progress(done)` is called after every `every` images (the check of 3,000 images at 128 px takes
    minutes)."""
    scores, idx = [], []
    for n, image in enumerate(images, start=1):
        top = index.ssim(image).topk(k)
        scores.append(top.values.numpy())
        idx.append(top.indices.numpy())
        if progress is not None and n % every == 0 and n < len(images):
            progress(n)
    return np.stack(scores), np.stack(idx)


def _stats(values: np.ndarray) -> dict:
    return {
        "mean": round(float(values.mean()), 4),
        "median": round(float(np.median(values)), 4),
        "p99": round(float(np.percentile(values, 99)), 4),
        "max": round(float(values.max()), 4),
    }


def pool_to(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Images [N, 1, R, R] area-averaged down to `resolution` (unchanged when already that size)."""
    return F.adaptive_avg_pool2d(images, resolution) if images.shape[-1] != resolution else images


def as_loaded(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Generated images [N, 1, R, R] in -1..1 brought to `resolution` as a user's copy would be: 8-bit, as
    the gateway writes them, then loaded as real radiographs are (`training.data.resample`: Lanczos when
    shrinking). At `resolution` itself they are left as they are.

    Not area pooling: the classifier checks compare generated images with real ones loaded at the
    judge's side, and a classifier told the real training images of the adult cohort apart by their
    resampling alone, half loaded at 64 px and half loaded at 128 px and area-pooled to 64, at AUC 0.83
    (0.51 with both halves resized by Lanczos). Area pooling a 128 px model's images gave them away."""
    if images.shape[-1] == resolution:
        return images
    pixels = [np.asarray(resample(Image.fromarray(p), resolution)) for p in to_uint8(images)]
    return torch.from_numpy(np.stack(pixels)).unsqueeze(1).float().div_(127.5).sub_(1)  # [N, 1, r, r]


@torch.no_grad()
def generate_images(
    generate: Generate, latent_dim: int, seed: int, labels: torch.Tensor, resolution: int, batch: int = 64
) -> torch.Tensor:
    """One image per label row, latents (seed, 0..N-1), clamped and brought to `resolution` as real
    images are loaded (`as_loaded`): [N, 1, r, r]."""
    out = []
    for start in range(0, len(labels), batch):
        rows = range(start, min(start + batch, len(labels)))
        z = torch.from_numpy(latents_for(seed, rows, latent_dim))
        images = generate(z, labels[start : start + len(rows)].float()).clamp(-1, 1)
        out.append(as_loaded(images, resolution))
    return torch.cat(out)


def stream_seed(seed: int, stream: int) -> int:
    """The seed of one check's latents: distinct per check, fixed by the user's seed."""
    return seed * 16 + stream


@torch.no_grad()
def memorisation(
    generate: Generate,
    latent_dim: int,
    train: RadiographSet,
    heldout: RadiographSet,
    resolution: int,
    count: int = 3000,
    seed: int = 0,
    batch: int = 64,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict, Image.Image]:
    """Nearest training image by (MS-)SSIM for `count` generated images and for every held-out image.
    `progress` gets a line every 500 generated images compared."""
    refs = train.images_at(resolution)
    index = similarity_index(refs)
    rng = np.random.default_rng(seed)
    label_rows = rng.integers(0, len(train), size=count)  # realistic label vectors: the training set's
    fakes = generate_images(generate, latent_dim, seed, train.labels[label_rows], resolution, batch)
    t0 = time.perf_counter()

    def compared(done: int) -> None:
        if progress is not None:
            left = (time.perf_counter() - t0) / done * (count - done)
            progress(f"  memorisation: {done} of {count} generated images compared, about {left:.0f} s left")

    fake_scores, fake_idx = nearest(index, fakes, progress=compared)
    real_scores, _ = nearest(index, heldout.images_at(resolution), k=1)
    threshold = float(np.percentile(real_scores[:, 0], 99.9))
    flagged = np.flatnonzero(fake_scores[:, 0] > threshold)
    ranked = flagged[np.argsort(-fake_scores[flagged, 0])]  # every flagged image, most similar first
    shown = ranked[:FIGURE_ROWS] if len(flagged) else np.argsort(-fake_scores[:, 0])[:8]
    tiles = [
        np.stack([to_uint8(fakes[i : i + 1])[0], *to_uint8(refs[fake_idx[i]])]) for i in shown
    ]  # each row: generated, then its 3 nearest training images
    result = {
        "metric": "MS-SSIM" if isinstance(index, MsSsimIndex) else "SSIM",
        "resolution": resolution,
        "generated": count,
        "heldout_real": len(heldout),
        "train_images": len(train),
        "generated_vs_train": _stats(fake_scores[:, 0]),
        "heldout_vs_train": _stats(real_scores[:, 0]),
        "threshold_real_p99_9": round(threshold, 4),
        "flagged": int(len(flagged)),
        "flagged_fraction": round(len(flagged) / count, 4),
        # the count's sampling spread: a few per 1,000 moves by several between seeds
        "flagged_fraction_interval_95": [round(x, 4) for x in binomial_interval(len(flagged), count)],
        # the goal's yardstick: the held-out real images over the same threshold (about 1 in their number)
        "heldout_flagged_fraction": round(float(np.mean(real_scores[:, 0] > threshold)), 4),
        # the other tail: generated images less like any training image than every held-out image is (or
        # than 99 % of them): variety that is no radiograph's shows here, not in the diversity ratio
        "below_heldout_min_fraction": round(float(np.mean(fake_scores[:, 0] < real_scores[:, 0].min())), 4),
        "below_heldout_p1_fraction": round(
            float(np.mean(fake_scores[:, 0] < np.percentile(real_scores[:, 0], 1))), 4
        ),
        "flagged_examples": [
            {
                "index": int(i),
                "seed": seed,
                "ssim": round(float(fake_scores[i, 0]), 4),
                "nearest_train": [train.filenames[j] for j in fake_idx[i]],
            }
            for i in ranked
        ],  # fmt: skip
        "figure_rows": f"the first {len(shown)} of the flagged images, most similar first"
        if len(flagged)
        else "the 8 most similar (none flagged)",
    }
    return result, grid_image(np.stack(tiles))


# ---- classifier checks -------------------------------------------------------------------------
def per_label_auc(
    names: list[str], targets: np.ndarray, scores: np.ndarray, opts: EvalOptions, with_interval: bool = True
) -> dict:
    """{label: {"auc", "low", "high", "positives"} or {"too_few_positives": k}} for one classifier."""
    out = {}
    for j, name in enumerate(names):
        positives = int((targets[:, j] >= 0.5).sum())
        if positives < opts.min_positives or positives == len(targets):
            out[name] = {"too_few_positives": positives}
        elif with_interval:
            result = bootstrap_auc(targets[:, j] >= 0.5, scores[:, j], opts.bootstrap, opts.seed)
            out[name] = {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}
        else:
            out[name] = {"auc": round(roc_auc(targets[:, j] >= 0.5, scores[:, j]), 4), "positives": positives}
    return out


def _mean_of(table: dict) -> float:
    aucs = [v["auc"] for v in table.values() if "auc" in v]
    return round(float(np.mean(aucs)), 4) if aucs else math.nan


def compare_aucs(
    names: list[str], targets: np.ndarray, real_scores: np.ndarray, fake_scores: np.ndarray, opts: EvalOptions
) -> dict:
    """Per-label AUC of a real-trained and a synthetic-trained classifier on the same real images, their
    ratio over the labels both can be scored on, and the means."""
    real_auc = per_label_auc(names, targets, real_scores, opts)
    fake_auc = per_label_auc(names, targets, fake_scores, opts)
    reported = [n for n in names if "auc" in real_auc[n] and "auc" in fake_auc[n]]
    ratio = {n: round(fake_auc[n]["auc"] / real_auc[n]["auc"], 4) for n in reported}
    return {
        "real_trained": real_auc,
        "synthetic_trained": fake_auc,
        "ratio_synthetic_over_real": ratio,
        "mean_auc_real_trained": _mean_of(real_auc),
        "mean_auc_synthetic_trained": _mean_of(fake_auc),
        "mean_ratio": round(float(np.mean(list(ratio.values()))), 4) if ratio else math.nan,
        "labels_reported": reported,
    }


def train_on_synthetic(
    names: list[str],
    real: clf.TrainResult,
    train_labels: torch.Tensor,
    synthetic: torch.Tensor,
    val: RadiographSet,
    test: RadiographSet,
    px: int,
    opts: EvalOptions,
    progress: Callable[[str], None],
) -> tuple[dict, clf.TrainResult]:
    """Train on synthetic, test on real: per-label test AUC of both classifiers and their ratio."""
    progress(f"classifier on {len(synthetic)} generated images with the training set's label vectors")
    fake = clf.train_classifier(
        synthetic, train_labels, val.images_at(px), val.labels, opts.classifier, opts.epochs, seed=opts.seed
    )
    test_images = test.images_at(px)
    compared = compare_aucs(
        names,
        test.labels.numpy(),
        clf.predict(real.model, test_images),
        clf.predict(fake.model, test_images),
        opts,
    )
    real_auc = compared["real_trained"]
    result = {
        "classifier": opts.classifier,
        "input_px": px,
        "epochs": opts.epochs,
        "train_images": len(synthetic),  # as many as the real training images, one per label vector
        "test_images": len(test),
        "bootstrap_resamples": opts.bootstrap,
        **compared,
        "labels_with_too_few_test_positives": {
            n: v["too_few_positives"] for n, v in real_auc.items() if "too_few_positives" in v
        },
        "best_epoch": {"real_trained": real.best_epoch, "synthetic_trained": fake.best_epoch},
        "val_auc": {"real_trained": round(real.val_auc, 4), "synthetic_trained": round(fake.val_auc, 4)},
    }
    return result, fake


def _repeat_row(seed: int, result: dict) -> dict:
    keys = ("mean_auc_real_trained", "mean_auc_synthetic_trained", "mean_ratio")
    return {"seed": seed, **{k: result[k] for k in keys}}


def repeated_train_on_synthetic(
    generate: Generate,
    latent_dim: int,
    names: list[str],
    first: dict,
    real_for: Callable[[int], clf.TrainResult],
    train: RadiographSet,
    val: RadiographSet,
    test: RadiographSet,
    px: int,
    opts: EvalOptions,
    progress: Callable[[str], None],
) -> dict:
    """`first` (the check at the user's seed) with repeats 1 .. n-1 at seed + k, each with its own latents,
    its own synthetic-trained classifier and the real-trained one of that seed (`real_for`).

    The per-label tables stay those of the first repeat; the means and the goal's ratio become the
    means over the repeats, with the ratio's standard deviation and range beside them."""
    rows = [_repeat_row(opts.seed, first)]
    for k in range(1, opts.tstr_repeats):
        seed = opts.seed + k
        progress(f"train on synthetic, test on real: repeat {k + 1} of {opts.tstr_repeats} (seed {seed})")
        latent_seed = stream_seed(seed, STREAM_SYNTHETIC)
        synthetic = generate_images(generate, latent_dim, latent_seed, train.labels, px)
        result, _ = train_on_synthetic(
            names, real_for(seed), train.labels, synthetic, val, test, px, replace(opts, seed=seed), progress
        )
        rows.append(_repeat_row(seed, result))
    ratios = [r["mean_ratio"] for r in rows]

    def mean(key: str) -> float:
        return round(float(np.mean([r[key] for r in rows])), 4)

    return {
        **first,
        "mean_auc_real_trained": mean("mean_auc_real_trained"),
        "mean_auc_synthetic_trained": mean("mean_auc_synthetic_trained"),
        "mean_ratio": mean("mean_ratio"),
        "mean_ratio_sd": round(float(np.std(ratios, ddof=1)), 4) if len(rows) > 1 else None,
        "mean_ratio_range": [min(ratios), max(ratios)],
        "repeats": rows,
        "per_label_tables": f"of the first repeat (seed {opts.seed}); the means are over the repeats",
    }


@torch.no_grad()
def controllability(
    generate: Generate, latent_dim: int, names: list[str], model: torch.nn.Module, px: int, opts: EvalOptions
) -> dict:
    """Each label alone raised 0 -> 1 over fixed latents; the classifier's mean score for that label at
    each value and Spearman's rank correlation between value and score (1: the label steers the image);
    the score change from 0 to 1 and its sign per label, and how many labels rise by `SWEEP_RISE` or more
    and how many fall."""
    values = np.linspace(0, 1, opts.sweep_steps)
    seed = stream_seed(opts.seed, STREAM_SWEEP)
    z = torch.from_numpy(latents_for(seed, range(opts.sweep_latents), latent_dim))  # [K, Z]
    raised = values[1:]  # every label at 0 is the same no-finding image: made once, not once per label
    at_zero = clf.predict(model, as_loaded(generate(z, torch.zeros(len(z), len(names))).clamp(-1, 1), px))
    out = {}
    for j, name in enumerate(names):
        labels = torch.zeros(len(raised) * len(z), len(names))
        labels[:, j] = torch.from_numpy(np.repeat(raised, len(z))).float()
        images = generate(z.repeat(len(raised), 1), labels).clamp(-1, 1)
        images = as_loaded(images, px)
        scores = np.concatenate([at_zero[:, j], clf.predict(model, images)[:, j]])
        scores = scores.reshape(len(values), len(z))  # [steps, K]
        per_latent = [r for k in range(len(z)) if not math.isnan(r := spearman(values, scores[:, k]))]
        change = float(scores[-1].mean() - scores[0].mean())
        out[name] = {
            "spearman_mean_score": round(spearman(values, scores.mean(1)), 4),
            "spearman_per_latent_mean": round(float(np.mean(per_latent)), 4) if per_latent else math.nan,
            "score_at_0": round(float(scores[0].mean()), 4),
            "score_at_1": round(float(scores[-1].mean()), 4),
            "score_change": round(change, 4),
            "sign": "+" if change > 0 else "-" if change < 0 else "0",
            "mean_score": [round(float(v), 4) for v in scores.mean(1)],
        }
    rising = [n for n, v in out.items() if v["score_change"] >= SWEEP_RISE]
    falling = [n for n, v in out.items() if v["score_change"] < 0]
    return {
        "values": [round(float(v), 3) for v in values],
        "latents": len(z),
        "labels": out,
        "rise_threshold": SWEEP_RISE,
        "labels_rising": len(rising),  # score change >= rise_threshold
        "labels_falling": len(falling),  # score change < 0
        "rising": rising,
        "falling": falling,
        "median_score_change": round(float(np.median([v["score_change"] for v in out.values()])), 4),
        "goal": f"at least 10 of 14 labels rise by >= {SWEEP_RISE}, none falls",
    }


@torch.no_grad()
def real_score_gap(
    names: list[str], model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor
) -> dict:
    """The sweep's yardstick on real images: per label, the classifier's mean score on held-out real
    images with the label, without it, and the difference. A generator whose label draws the disease as
    clearly as real radiographs show it moves the score by about this much; a label whose real gap is
    under the sweep's rise threshold cannot reach it by resemblance alone."""
    scores, targets = clf.predict(model, images), labels.numpy() >= 0.5
    out = {}
    for j, name in enumerate(names):
        pos, neg = scores[targets[:, j], j], scores[~targets[:, j], j]
        gap = float(pos.mean() - neg.mean()) if len(pos) and len(neg) else None
        out[name] = {
            "positives": int(len(pos)),
            "positive_mean": round(float(pos.mean()), 4) if len(pos) else None,
            "negative_mean": round(float(neg.mean()), 4) if len(neg) else None,
            "gap": None if gap is None else round(gap, 4),
        }
    reaching = [n for n, v in out.items() if v["gap"] is not None and v["gap"] >= SWEEP_RISE]
    return {"images": len(images), "labels": out, "labels_reaching_rise": len(reaching), "reaching": reaching}


def _label_rows(labels: np.ndarray, index: int) -> np.ndarray:
    """Rows with label `index` (>= 0.5); index -1 is no finding: rows with no label at all."""
    positive = labels >= 0.5
    return ~positive.any(axis=1) if index < 0 else positive[:, index]


@torch.no_grad()
def real_spread(
    names: list[str],
    model: torch.nn.Module,
    real_images: torch.Tensor,
    real_labels: torch.Tensor,
    train_labels: torch.Tensor,
) -> dict:
    """The real side of the collapse detector: for no finding and each label, the mean pairwise distance
    in the classifier's feature space among the real images with it (None below two images), their
    number, and the number of training images with it; and the same distance among the real images
    with that label alone (no other label), the label vector the generated side is drawn with."""
    features = clf.features(model, real_images)  # [N, D]
    real_targets, train_targets = real_labels.numpy(), train_labels.numpy()
    alone_rows = (real_targets >= 0.5).sum(axis=1) <= 1  # no finding, or one label only
    out = {}
    for index, name in enumerate([NO_FINDING, *names]):
        mask = _label_rows(real_targets, index - 1)
        alone = mask & alone_rows
        out[name] = {
            "distance": mean_pairwise_distance(features[mask]) if mask.sum() >= 2 else None,
            "real_images": int(mask.sum()),
            "train_images": int(_label_rows(train_targets, index - 1).sum()),
            "alone_distance": mean_pairwise_distance(features[alone]) if alone.sum() >= 2 else None,
            "alone_images": int(alone.sum()),
        }
    return {"images": len(real_images), "feature_dim": int(features.shape[1]), "labels": out}


@torch.no_grad()
def collapse(
    generate: Generate, latent_dim: int, names: list[str], model: torch.nn.Module, px: int, real: dict,
    opts: EvalOptions,
) -> dict:  # fmt: skip
    """The collapse detector: for no finding and for each label alone, `opts.collapse_latents` generated
    images with that one label vector and different latents; their mean pairwise distance in the
    classifier's feature space over the same statistic among the real images with that label
    (`real`, from `real_spread`).

    A ratio near 0: the label fixed the image whatever the latent (collapse by conditioning); near 1:
    as varied as real images with the label. The real images of a label may carry other labels too,
    the generated ones carry that label alone; `real_alone_ratio` is the same ratio for the real images
    with that label alone (what real radiographs drawn with the generated side's label vector score),
    the yardstick for reading the goal. Labels with fewer than two real images get no ratio."""
    k = opts.collapse_latents
    vectors = torch.cat([torch.zeros(1, len(names)), torch.eye(len(names))])  # [L + 1, L]
    z = torch.from_numpy(latents_for(stream_seed(opts.seed, STREAM_COLLAPSE), range(k), latent_dim))
    z, labels = z.repeat(len(vectors), 1), vectors.repeat_interleave(k, dim=0)  # the same k latents each
    images = torch.cat(
        [
            as_loaded(generate(z[i : i + 192], labels[i : i + 192]).clamp(-1, 1), px)
            for i in range(0, len(z), 192)
        ]
    )  # [(L + 1) * k, 1, px, px]
    features = clf.features(model, images).reshape(len(vectors), k, -1)  # [L + 1, k, D]
    out = {}
    for name, group in zip([NO_FINDING, *names], features, strict=True):
        generated = mean_pairwise_distance(group)
        spread = real["labels"][name]
        ratio = generated / spread["distance"] if spread["distance"] else None
        alone = spread["alone_distance"]
        out[name] = {
            "ratio": None if ratio is None else round(ratio, 4),
            "generated_distance": round(generated, 4),
            "real_distance": None if spread["distance"] is None else round(spread["distance"], 4),
            "real_images": spread["real_images"],
            "train_images": spread["train_images"],
            "real_alone_ratio": round(alone / spread["distance"], 4)
            if alone and spread["distance"]
            else None,
            "real_alone_images": spread["alone_images"],
        }
    judged = {n: v["ratio"] for n, v in out.items() if v["train_images"] >= COLLAPSE_MIN_TRAIN}
    judged = {n: r for n, r in judged.items() if r is not None}
    return {
        "generated_per_label": opts.collapse_latents,
        "real_images": f"the cohort's training and test split, {real['images']} images",
        "feature_dim": real["feature_dim"],
        "labels": out,
        "goal": f"ratio >= {COLLAPSE_GOAL} for every label with >= {COLLAPSE_MIN_TRAIN} training images",
        "labels_judged": list(judged),
        "min_ratio": round(min(judged.values()), 4) if judged else None,
        "labels_below_goal": [n for n, r in judged.items() if r < COLLAPSE_GOAL],
        "real_alone_below_goal": [
            n for n in judged if (r := out[n]["real_alone_ratio"]) is not None and r < COLLAPSE_GOAL
        ],
    }


def label_fidelity(
    names: list[str],
    model: torch.nn.Module,
    synthetic: torch.Tensor,
    conditions: torch.Tensor,
    opts: EvalOptions,
) -> dict:
    """The real-trained classifier's AUC on generated images against the labels they were asked for."""
    table = per_label_auc(names, conditions.numpy(), clf.predict(model, synthetic), opts, with_interval=False)
    return {"images": len(synthetic), "per_label": table, "mean_auc": _mean_of(table)}


def site_of(patient_id: str) -> str:
    """The site (cohort) of a patient id: its prefix up to the first underscore ("nih_", "kermany_",
    "ieee8023_"), or "other" for an id without one."""
    head, sep, _ = patient_id.partition("_")
    return head + sep if sep else "other"


def per_site(
    names: list[str],
    real_model: torch.nn.Module,
    synthetic_model: torch.nn.Module,
    synthetic: torch.Tensor,
    train: RadiographSet,
    test: RadiographSet,
    px: int,
    opts: EvalOptions,
) -> dict:
    """Train on synthetic and label fidelity within each site, every label against that site's negatives.

    A generated image belongs to the site of the training image whose label vector it was drawn with;
    a test image to its patient's site."""
    train_sites = np.array([site_of(p) for p in train.patient_ids])
    test_sites = np.array([site_of(p) for p in test.patient_ids])
    test_images, test_targets = test.images_at(px), test.labels.numpy()
    real_scores, fake_scores = clf.predict(real_model, test_images), clf.predict(synthetic_model, test_images)
    fidelity_scores, conditions = clf.predict(real_model, synthetic), train.labels.numpy()
    sites = {}
    for site in sorted(set(train_sites) | set(test_sites)):
        on_test, on_train = test_sites == site, train_sites == site
        entry: dict = {"test_images": int(on_test.sum()), "train_images": int(on_train.sum())}
        if on_test.any():
            entry["train_on_synthetic_test_on_real"] = compare_aucs(
                names, test_targets[on_test], real_scores[on_test], fake_scores[on_test], opts
            )
        if on_train.any():
            table = per_label_auc(
                names, conditions[on_train], fidelity_scores[on_train], opts, with_interval=False
            )
            entry["label_fidelity"] = {
                "images": int(on_train.sum()),
                "per_label": table,
                "mean_auc": _mean_of(table),
            }
        sites[site] = entry
    return {
        "meaning": "each label against negatives of the same site (patient id prefix); generated images "
        "take the site of the training image whose label vector they were drawn with",
        "sites": sites,
    }


def two_sample_test(real: torch.Tensor, fake: torch.Tensor, opts: EvalOptions, holdout: float = 0.25) -> dict:
    """Train a classifier to tell real (1) from generated (0) images; its held-out accuracy and AUC.
    0.5 means the classifier cannot tell them apart."""
    n = min(len(real), len(fake))
    rng = np.random.default_rng(opts.seed)
    images = torch.cat([real[rng.permutation(len(real))[:n]], fake[rng.permutation(len(fake))[:n]]])
    targets = torch.cat([torch.ones(n, 1), torch.zeros(n, 1)])
    order = rng.permutation(2 * n)
    cut = int(round(2 * n * (1 - holdout)))
    fit, held = order[:cut], order[cut:]
    result = clf.train_classifier(
        images[fit], targets[fit], architecture=opts.classifier, epochs=opts.epochs, seed=opts.seed
    )
    scores = clf.predict(result.model, images[held])[:, 0]
    truth = targets[held, 0].numpy()
    auc = bootstrap_auc(truth, scores, opts.bootstrap, opts.seed)
    return {
        "images_per_side": n,
        "held_out": len(held),
        "accuracy": round(float(((scores >= 0.5) == (truth >= 0.5)).mean()), 4),
        "auc": round(auc["auc"], 4),
        "auc_low": round(auc["low"], 4),
        "auc_high": round(auc["high"], 4),
        "meaning": "0.5 = indistinguishable; 1.0 = always told apart",
    }


def two_sample_by_side(real: torch.Tensor, fake: torch.Tensor, opts: EvalOptions) -> dict:
    """The two-sample test again with both sets area-pooled to half, a quarter, ... of their side, down to
    the classifier's smallest input (8 px; 32 for densenet121): {side: {"auc", "accuracy"}}. Where the
    AUC falls, the images pooled to that side look real to the classifier, and what gives them away
    lies in the finer scales. Costs about a third of the test at the full side."""
    out = {}
    side, smallest = real.shape[-1] // 2, 32 if opts.classifier == "densenet121" else 8
    while side >= smallest:
        result = two_sample_test(pool_to(real, side), pool_to(fake, side), opts)
        out[str(side)] = {"auc": result["auc"], "accuracy": result["accuracy"]}
        side //= 2
    return out


def feature_distances(
    model: torch.nn.Module,
    train: torch.Tensor,
    test: torch.Tensor,
    synthetic: torch.Tensor,
    opts: EvalOptions,
) -> dict:
    """Fréchet distance and KID to the real test images, in the real-trained classifier's feature space;
    real training images give the floor (what two real samples of these sizes differ by)."""
    f_train, f_test, f_fake = (clf.features(model, x) for x in (train, test, synthetic))
    size = min(len(f_test), 200)
    kid_fake = kernel_inception_distance(f_fake, f_test, subset_size=size, seed=opts.seed)
    kid_real = kernel_inception_distance(f_train, f_test, subset_size=size, seed=opts.seed)
    return {
        "feature_dim": int(f_test.shape[1]),
        "images": {"generated": len(f_fake), "real_train": len(f_train), "real_test": len(f_test)},
        "frechet_generated_vs_test": round(frechet_distance(f_fake, f_test), 4),
        "frechet_train_vs_test": round(frechet_distance(f_train, f_test), 4),
        "kid_generated_vs_test": round(kid_fake["kid"], 5),
        "kid_generated_vs_test_std": round(kid_fake["std"], 5),
        "kid_train_vs_test": round(kid_real["kid"], 5),
        "kid_train_vs_test_std": round(kid_real["std"], 5),
        "kid_subset_size": size,
    }


@torch.no_grad()
def label_correlation(
    generate: Generate,
    latent_dim: int,
    names: list[str],
    model: torch.nn.Module,
    test_images: torch.Tensor,
    px: int,
    opts: EvalOptions,
) -> tuple[dict, Image.Image]:
    """Figure 7: images with one label drawn uniformly in 0..1 (the others 0), scored by the classifier
    for every label; Pearson correlation of the scores per label pair, clustered. The real test images'
    score correlations are drawn beside it in the same order."""
    per_label = opts.correlation_images
    labels = torch.zeros(per_label * len(names), len(names))
    rng = np.random.default_rng(stream_seed(opts.seed, STREAM_CORRELATION))
    for j in range(len(names)):
        labels[j * per_label : (j + 1) * per_label, j] = torch.from_numpy(
            rng.uniform(0, 1, per_label)
        ).float()
    images = generate_images(generate, latent_dim, stream_seed(opts.seed, STREAM_CORRELATION), labels, px)
    generated = pearson_matrix(clf.predict(model, images))
    real = pearson_matrix(clf.predict(model, test_images))
    order = cluster_order(generated)
    ordered = [names[i] for i in order]
    pick = np.ix_(order, order)
    left, right = heatmap(generated[pick], ordered), heatmap(real[pick], ordered)
    gap = np.full((left.shape[0], 16, 3), 255, np.uint8)
    picture = np.concatenate([left, gap, right], axis=1)

    def rounded(matrix: np.ndarray) -> list[list[float | None]]:
        return [[None if math.isnan(v) else round(float(v), 4) for v in row] for row in matrix]

    result = {
        "images": len(images),
        "order": ordered,
        "generated": rounded(generated[pick]),
        "real_test": rounded(real[pick]),
        "figure": "left: generated (one label uniform in 0..1); right: real test images; clustered order",
    }
    return result, Image.fromarray(picture, "RGB")


def classifier_checks(
    generate: Generate,
    latent_dim: int,
    names: list[str],
    real: clf.TrainResult,
    train: RadiographSet,
    val: RadiographSet,
    test: RadiographSet,
    px: int,
    opts: EvalOptions,
    timings: dict[str, float],
    progress: Callable[[str], None],
    real_for: Callable[[int], clf.TrainResult] | None = None,
) -> tuple[dict, dict[str, Image.Image]]:
    """Every classifier check but the sweep and the collapse detector, with `real` the real-trained one
    and `real_for(seed)` the real-trained classifier of another seed (for the repeats of train on
    synthetic, test on real; without it they are skipped)."""
    train_images = train.images_at(px)
    t0 = time.perf_counter()
    synthetic = generate_images(
        generate, latent_dim, stream_seed(opts.seed, STREAM_SYNTHETIC), train.labels, px
    )  # [N, 1, px, px]: the training set's label vectors, new latents
    timings["generate_synthetic_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    tstr, fake = train_on_synthetic(names, real, train.labels, synthetic, val, test, px, opts, progress)
    if real_for is not None and opts.tstr_repeats > 1:
        tstr = repeated_train_on_synthetic(
            generate, latent_dim, names, tstr, real_for, train, val, test, px, opts, progress
        )
    timings["train_on_synthetic_s"] = time.perf_counter() - t0
    spread = ""
    if "repeats" in tstr:
        spread = f", ratio sd {tstr['mean_ratio_sd']} over {len(tstr['repeats'])} repeats"
    progress(
        f"train on synthetic, test on real: mean AUC {tstr['mean_auc_synthetic_trained']} vs "
        f"{tstr['mean_auc_real_trained']} real-trained over {len(tstr['labels_reported'])} labels, "
        f"ratio {tstr['mean_ratio']}{spread} "
        f"({timings['classifier_real_s'] + timings['train_on_synthetic_s']:.0f} s)"
    )

    t0 = time.perf_counter()
    fidelity = label_fidelity(names, real.model, synthetic, train.labels, opts)
    sites = per_site(names, real.model, fake.model, synthetic, train, test, px, opts)
    timings["label_fidelity_and_sites_s"] = time.perf_counter() - t0
    progress(
        f"label fidelity: mean AUC {fidelity['mean_auc']}; per site: "
        + ", ".join(
            f"{site} {entry.get('label_fidelity', {}).get('mean_auc', '-')} / "
            f"{entry.get('train_on_synthetic_test_on_real', {}).get('mean_ratio', '-')}"
            for site, entry in sites["sites"].items()
        )
        + f" (fidelity AUC / train-on-synthetic ratio; {timings['label_fidelity_and_sites_s']:.0f} s)"
    )

    t0 = time.perf_counter()
    two_sample = two_sample_test(train_images, synthetic, opts)
    two_sample["by_side"] = two_sample_by_side(train_images, synthetic, opts)
    timings["two_sample_s"] = time.perf_counter() - t0
    progress(
        f"two-sample test: held-out accuracy {two_sample['accuracy']}, AUC {two_sample['auc']}; with both "
        "sets pooled to "
        + ", ".join(f"{side} px {r['auc']}" for side, r in two_sample["by_side"].items())
        + f" ({timings['two_sample_s']:.0f} s)"
    )

    t0 = time.perf_counter()
    distances = feature_distances(real.model, train_images, test.images_at(px), synthetic, opts)
    timings["feature_distances_s"] = time.perf_counter() - t0
    progress(
        f"Fréchet distance {distances['frechet_generated_vs_test']} (real floor "
        f"{distances['frechet_train_vs_test']}), KID {distances['kid_generated_vs_test']}"
    )

    t0 = time.perf_counter()
    correlation, corr_figure = label_correlation(
        generate, latent_dim, names, real.model, test.images_at(px), px, opts
    )
    timings["label_correlation_s"] = time.perf_counter() - t0
    results = {
        "train_on_synthetic_test_on_real": tstr,
        "label_fidelity": fidelity,
        "per_site": sites,
        "two_sample_test": two_sample,
        "feature_distances": distances,
        "label_correlation": correlation,
    }
    return results, {"eval_label_correlation.png": corr_figure}


# ---- pictures ----------------------------------------------------------------------------------
def _one_label(n_labels: int, index: int, values: list[float] | np.ndarray) -> torch.Tensor:
    """[len(values), n_labels]: label `index` at each value, the others 0."""
    rows = torch.zeros(len(values), n_labels)
    rows[:, index] = torch.as_tensor(np.asarray(values, dtype=np.float32))
    return rows


@torch.no_grad()
def transitions(G, label_names: list[str], seed: int, steps=(0.0, 0.3, 0.6, 1.0)) -> Image.Image:
    """One row per label, one column per value of that label, the same latent everywhere."""
    z = torch.from_numpy(latents_for(seed, [0], G.latent_dim)).expand(len(steps), -1)
    rows = [to_uint8(G(z, _one_label(len(label_names), j, steps))) for j in range(len(label_names))]
    return grid_image(np.stack(rows))


@torch.no_grad()
def transition_gif(G, label_names: list[str], seed: int, path: Path, frames: int = 11) -> None:
    """Every label at once (one tile each), its value moving 0 -> 1 -> 0."""
    z = torch.from_numpy(latents_for(seed, [0], G.latent_dim)).expand(len(label_names), -1)
    values = list(np.linspace(0, 1, frames)) + list(np.linspace(1, 0, frames))[1:-1]
    images = []
    for v in values:
        tiles = to_uint8(G(z, torch.eye(len(label_names)) * float(v)))  # [L, H, W]
        cols = -(-len(tiles) // 2)
        tiles = np.concatenate([tiles, np.zeros((2 * cols - len(tiles), *tiles.shape[1:]), np.uint8)])
        images.append(grid_image(tiles.reshape(2, cols, *tiles.shape[1:])))
    images[0].save(path, save_all=True, append_images=images[1:], duration=120, loop=0)


@torch.no_grad()
def difference_maps(G, label_names: list[str], seed: int) -> Image.Image:
    """Per label: healthy, diseased, and the difference over the healthy image (red brighter, blue darker);
    the same drawing as the gateway's `POST /v1/visualize` (thorax/pictures.py)."""
    n = len(label_names)
    z = torch.from_numpy(latents_for(seed, [0], G.latent_dim)).expand(n + 1, -1)
    images = to_uint8(G(z, torch.cat([torch.zeros(1, n), torch.eye(n)])))  # healthy, then each label
    rows = [difference_row(images[0], sick) for sick in images[1:]]
    return Image.fromarray(np.concatenate(rows), "RGB")


@torch.no_grad()
def two_label_grid(
    G, label_names: list[str], seed: int, first: str, second: str, steps: int = 4
) -> Image.Image:
    """`first` down the rows, `second` across the columns, each 0 -> 1; the same latent everywhere."""
    i, j = label_names.index(first), label_names.index(second)
    z = torch.from_numpy(latents_for(seed, [0], G.latent_dim)).expand(steps, -1)
    values = np.linspace(0, 1, steps)
    rows = []
    for a in values:
        labels = _one_label(len(label_names), j, values)
        labels[:, i] = float(a)
        rows.append(to_uint8(G(z, labels)))
    return Image.fromarray(tile_grid(np.stack(rows)), "L")


def pictures(G, names: list[str], seed: int, folder: Path) -> list[str]:
    figures = {
        "eval_transitions.png": transitions(G, names, seed),
        "eval_difference_maps.png": difference_maps(G, names, seed),
    }
    if {"Cardiomegaly", "Effusion"} <= set(names):
        figures["eval_cardiomegaly_effusion.png"] = two_label_grid(G, names, seed, "Cardiomegaly", "Effusion")
    for name, image in figures.items():
        image.save(folder / name)
    transition_gif(G, names, seed, folder / "eval_transitions.gif")
    return [*figures, "eval_transitions.gif"]


# ---- the real data of the model's cohort, and the classifier trained on it --------------------
@dataclass
class CohortData:
    """The real splits a model is judged against: its cohort's patients on its training run's split,
    loaded the first time a check asks for them.

    Args:
        data_dir:         the training data folder.
        resolution:       side the images are loaded at (the model's).
        label_names:      the model's labels, in its order.
        fractions:        train / validation / test fractions of patients.
        split_seed:       seed of the split hash.
        patient_prefixes: the cohort (patient id prefixes); empty for every patient.
    """

    data_dir: Path
    resolution: int
    label_names: tuple[str, ...]
    fractions: tuple[float, float, float]
    split_seed: int
    patient_prefixes: tuple[str, ...] = ()
    splits: dict[str, RadiographSet] = field(default_factory=dict)

    def split(self, name: str) -> RadiographSet:
        if name not in self.splits:
            self.splits[name] = RadiographSet(
                self.data_dir,
                self.resolution,
                self.label_names,
                name,
                self.fractions,
                self.split_seed,
                patient_prefixes=self.patient_prefixes,
            )
        return self.splits[name]

    def images_by_split(self) -> dict[str, dict[str, int]]:
        """{split: {site: images}} of the splits loaded so far."""
        out = {}
        for name, split in self.splits.items():
            sites = [site_of(p) for p in split.patient_ids]
            out[name] = {site: sites.count(site) for site in sorted(set(sites))}
        return out


def real_trained_classifier(
    data: CohortData, px: int, opts: EvalOptions, progress: Callable[[str], None]
) -> tuple[clf.TrainResult, dict]:
    """The classifier trained on the cohort's real training split, from the cache when it holds one for
    the same data, cohort, resolution, classifier, epochs, seed and split; else trained (and stored)."""
    key = {
        "data": str(data.data_dir.resolve()),
        "label_table_sha256": classifier_cache.file_sha256(find_label_table(data.data_dir)),
        "patient_prefixes": list(data.patient_prefixes),
        "resolution": data.resolution,
        "input_px": px,
        "classifier": opts.classifier,
        "epochs": opts.epochs,
        "seed": opts.seed,
        "split_fractions": list(data.fractions),
        "split_seed": data.split_seed,
        "label_names": list(data.label_names),
    }
    if opts.balanced_judge:  # only then in the key, so that the default judge keeps its cache entry
        key["balanced"] = True
    root = classifier_cache.cache_root()
    path = classifier_cache.entry_path(root, key)
    info = {
        "classifier": opts.classifier,
        "input_px": px,
        "epochs": opts.epochs,
        "balanced": opts.balanced_judge,
    }
    if opts.cache:
        classifier_cache.seed_from_shipped(root, key)  # the project's judge, where it ships one
    if opts.cache and (cached := classifier_cache.load_classifier(root, key, len(data.label_names))):
        shipped = classifier_cache.shipped_name(root, key)
        origin = f" (the project's shipped judge {shipped})" if shipped else ""
        progress(f"real-trained classifier from the cache: {path}{origin}")
        cached.model.to(memory_format=torch.channels_last)  # as below
        return cached, {**info, "cached": True, "shipped": shipped, "file": str(path)}
    train, val = data.split("train"), data.split("val")
    progress(f"classifier ({opts.classifier}, {px} px, {opts.epochs} epochs) on {len(train)} real images")
    result = clf.train_classifier(
        train.images_at(px), train.labels, val.images_at(px), val.labels, opts.classifier, opts.epochs,
        seed=opts.seed, balanced=opts.balanced_judge,
    )  # fmt: skip
    if opts.cache:
        classifier_cache.save_classifier(root, key, result)
    result.model.to(memory_format=torch.channels_last)  # 1.5x faster features here, the same to 1e-9
    return result, {**info, "cached": False, "file": str(path) if opts.cache else None}


def _beside_classifier(cache_file: str | None, name: str, compute: Callable[[], dict]) -> dict:
    """`compute()`, kept under `name` beside the cached classifier: a warm run loads it instead (it
    depends on nothing but the classifier and the cohort's real images)."""
    if cache_file and (found := classifier_cache.load_extra(Path(cache_file), name)):
        return found
    value = compute()
    if cache_file:
        classifier_cache.save_extra(Path(cache_file), name, value)
    return value


def cohort_spread(data: CohortData, model: torch.nn.Module, px: int, cache_file: str | None) -> dict:
    """`real_spread` over the cohort's training and test images, kept beside the cached classifier,
    so that a warm quick check loads no real image."""

    def compute() -> dict:
        train, test = data.split("train"), data.split("test")
        reals = torch.cat([train.images_at(px), test.images_at(px)])
        labels = torch.cat([train.labels, test.labels])
        return real_spread(list(data.label_names), model, reals, labels, train.labels)

    return _beside_classifier(cache_file, "collapse_real_spread_2", compute)  # _2: with the alone spread


def cohort_score_gap(data: CohortData, model: torch.nn.Module, px: int, cache_file: str | None) -> dict:
    """`real_score_gap` on the cohort's test split, kept beside the cached classifier."""

    def compute() -> dict:
        test = data.split("test")
        return real_score_gap(list(data.label_names), model, test.images_at(px), test.labels)

    return _beside_classifier(cache_file, "sweep_real_gap", compute)


# ---- the command -------------------------------------------------------------------------------
def _card_summary(evaluation: dict, opts: EvalOptions) -> dict:
    """The card's `evaluation` section: the headline figures, the rest in evaluation.json."""
    summary: dict = {"file": "evaluation.json", "checks": list(opts.checks)}
    if is_guided(evaluation.get("label_guidance", 1.0)):
        summary["label_guidance"] = evaluation["label_guidance"]
    if evaluation.get("label_variation_scale", 1.0) != 1.0:
        summary["label_variation_scale"] = evaluation["label_variation_scale"]
    if cohort := evaluation.get("cohort"):
        summary["cohort"] = cohort["name"]
    if memo := evaluation.get("memorisation"):
        summary.update(
            {
                "memorisation_metric": memo["metric"],
                "memorisation_flagged": f"{memo['flagged']} of {memo['generated']}",
                "memorisation_threshold": memo["threshold_real_p99_9"],
                "generated_vs_train_similarity_median": memo["generated_vs_train"]["median"],
                "heldout_vs_train_similarity_median": memo["heldout_vs_train"]["median"],
            }
        )
    if checks := evaluation.get("classifier_checks"):
        tstr, dist = checks["train_on_synthetic_test_on_real"], checks["feature_distances"]
        summary.update(
            {
                "classifier": f"{tstr['classifier']}, {tstr['input_px']} px, trained here on the real split",
                "tstr_mean_auc_real_trained": tstr["mean_auc_real_trained"],
                "tstr_mean_auc_synthetic_trained": tstr["mean_auc_synthetic_trained"],
                "tstr_mean_ratio": tstr["mean_ratio"],
                "tstr_repeats": len(tstr.get("repeats", [None])),
                "tstr_mean_ratio_sd": tstr.get("mean_ratio_sd"),
                "tstr_labels_reported": len(tstr["labels_reported"]),
                "label_fidelity_mean_auc": checks["label_fidelity"]["mean_auc"],
            }
        )
        for site, entry in checks["per_site"]["sites"].items():
            if fidelity := entry.get("label_fidelity"):
                summary[f"label_fidelity_mean_auc_{site.rstrip('_')}"] = fidelity["mean_auc"]
            if site_tstr := entry.get("train_on_synthetic_test_on_real"):
                # the per-site tables are those of the first repeat, not the repeats' mean above
                summary[f"tstr_ratio_{site.rstrip('_')}_first_repeat"] = site_tstr["mean_ratio"]
    if sweep := evaluation.get("controllability"):
        labels = sweep["labels"].values()
        summary.update(
            {
                "controllability_median_spearman": round(
                    float(np.nanmedian([v["spearman_mean_score"] for v in labels])), 4
                ),
                # the size of the effect, which a rank correlation does not show
                "controllability_median_score_change": sweep["median_score_change"],
                f"sweep_labels_rising_{SWEEP_RISE}": f"{sweep['labels_rising']} of {len(sweep['labels'])}",
                "sweep_labels_falling": sweep["labels_falling"],
            }
        )
    if checks:
        summary.update(
            {
                "two_sample_accuracy": checks["two_sample_test"]["accuracy"],
                "two_sample_auc": checks["two_sample_test"]["auc"],
                "frechet_generated_vs_test": dist["frechet_generated_vs_test"],
                "frechet_real_floor": dist["frechet_train_vs_test"],
                "kid_generated_vs_test": dist["kid_generated_vs_test"],
                "kid_real_floor": dist["kid_train_vs_test"],
            }
        )
    if found := evaluation.get("collapse"):
        summary["collapse_min_ratio"] = found["min_ratio"]
        summary[f"collapse_labels_below_{COLLAPSE_GOAL}"] = (
            ", ".join(found["labels_below_goal"]) if found["labels_below_goal"] else "none"
        )
    return summary


def _generator_of(G: torch.nn.Module, config: dict) -> Generate:
    """What the checks call: the generator at the resolution its run has reached (a run's `generator/`
    mid-schedule has untrained upper blocks), upsampled to its full side."""
    reached = config.get("training", {}).get("reached_resolution", config["resolution"])
    if reached >= config["resolution"]:
        return G
    level, side = level_of(reached), config["resolution"]
    return lambda z, labels: F.interpolate(G(z, labels, level=level), size=side, mode="nearest")


def _cohort(config: dict) -> tuple[tuple[str, ...], str]:
    """The model's cohort from its generator.json (or its run's config): patient prefixes and a name."""
    run_config = config.get("training", {}).get("config", {})
    prefixes = tuple(config.get("patient_prefixes", run_config.get("patient_prefixes", [])))
    name = config.get("cohort", run_config.get("cohort")) or (
        "patients " + ", ".join(f"{p}*" for p in prefixes) if prefixes else "all patients"
    )
    return prefixes, name


def _print_sweep(sweep: dict, progress: Callable[[str], None]) -> None:
    progress(
        f"sweep: {sweep['labels_rising']} of {len(sweep['labels'])} labels rise by >= {SWEEP_RISE}, "
        f"{sweep['labels_falling']} fall; median change {sweep['median_score_change']:+.4f}"
    )
    reference = sweep.get("real_reference", {}).get("labels", {})
    if reference:
        progress(
            f"  (real test images: {sweep['real_reference']['labels_reaching_rise']} of {len(reference)} "
            f"labels score >= {SWEEP_RISE} higher with the label than without; the gap is on the right)"
        )
    for name, v in sweep["labels"].items():
        gap = reference.get(name, {}).get("gap")
        real = "" if gap is None else f"   real gap {gap:+.4f} ({reference[name]['positives']} positives)"
        change = f"{v['score_at_0']:.4f} -> {v['score_at_1']:.4f}  {v['score_change']:+.4f}"
        progress(f"  {name:20s} {change}{real}")


def _print_collapse(found: dict, progress: Callable[[str], None]) -> None:
    below = ", ".join(found["labels_below_goal"]) or "none"
    progress(
        f"collapse: min diversity ratio {found['min_ratio']} over {len(found['labels_judged'])} labels "
        f"with >= {COLLAPSE_MIN_TRAIN} training images; below {COLLAPSE_GOAL}: {below}"
    )
    below_alone = ", ".join(found["real_alone_below_goal"]) or "none"
    progress(
        f"  (real images with the label alone against all real images with it: below {COLLAPSE_GOAL}: "
        f"{below_alone}; their ratio on the right)"
    )
    for name, v in found["labels"].items():
        alone = v["real_alone_ratio"]
        progress(
            f"  {name:20s} ratio {v['ratio']}  (real {v['real_images']}, training {v['train_images']})"
            + (f"   real alone {alone} ({v['real_alone_images']} images)" if alone is not None else "")
        )


def evaluate_model(
    ref: str | None,
    data_dir: Path,
    opts: EvalOptions | None = None,
    store: Path | None = None,
    split_seed: int | None = None,
    fractions: tuple[float, float, float] | None = None,
    progress: Callable[[str], None] = print,
    generator_dir: Path | None = None,
    label_guidance: LabelGuidance | None = None,
    out_dir: Path | None = None,
    label_variation_scale: float | dict[str, float] | None = None,
) -> dict:
    """Run the checks on a stored model (or, with `generator_dir`, on a generator folder such as a run's
    `generator/`), write the results into its folder (and a stored model's card); returns them.

    With `out_dir` the results go there instead and nothing of the model is touched: a trial, such as
    the model judged at another `label_guidance` or `label_variation_scale` than its files draw (which
    needs `out_dir`, so that a model's record always describes what its files draw). A stored model's
    folder given as `generator_dir` needs `out_dir` too (writing into it would break its checksums;
    name it as NAME/VERSION to update its record and card).

    The split defaults to the one in the generator's run config, else 80/10/10 with hash seed 0."""
    opts = opts or EvalOptions()
    for flag, value, other in (
        ("--label-guidance", label_guidance, "at another strength"),
        ("--label-variation-scale", label_variation_scale, "with another spread"),
    ):
        if value is not None and out_dir is None:
            raise UserError(
                f"{flag} judges the model {other} than its files draw: give --out DIR for the results "
                "(the model's own record stays as it is)"
            )
    if generator_dir is not None and out_dir is None and (Path(generator_dir) / "SHA256SUMS").is_file():
        raise UserError(
            f"{generator_dir} is a stored model's folder: evaluate it as NAME/VERSION (its record and "
            "card are updated, checksums included), or give --out DIR for the results"
        )
    unknown = sorted(set(opts.checks) - set(CHECKS))
    if unknown:
        raise ValueError(f"unknown check(s) {', '.join(unknown)}; choose from {', '.join(CHECKS)}")
    checks = set(opts.checks) | ({"sweep", "collapse"} if "classifier" in opts.checks else set())
    model: StoredModel | None = None
    if generator_dir is None:
        model = open_model(ref, store or store_root())
        folder, name = model.path, model.ref
    else:
        folder, name = Path(generator_dir), str(generator_dir)
    G, config = load_generator(folder)
    try:
        G.set_sampling(label_guidance=label_guidance, label_variation_scale=label_variation_scale)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    folder = out_dir or folder  # where the results go; the generator was read above
    # channels_last: 1.8x faster generation on this CPU (176 images at 64 px: 3.5 vs 6.2 s), the same
    # images to fp32 rounding (largest difference 1e-5)
    G = G.to(memory_format=torch.channels_last)
    generate = _generator_of(G, config)
    torch.manual_seed(opts.seed)
    names = list(config["label_names"])
    resolution = config["resolution"]
    run_config = config.get("training", {}).get("config", {})
    fractions = tuple(fractions or run_config.get("split", (0.8, 0.1, 0.1)))
    split_seed = run_config.get("seed", 0) if split_seed is None else split_seed
    prefixes, cohort = _cohort(config)
    data = CohortData(Path(data_dir), resolution, tuple(names), fractions, split_seed, prefixes)
    px = min(opts.classifier_px, resolution)
    # The classifier checks see real images loaded at px itself, as for a model of that side: a 128 px
    # model then meets the same judge (the same cache entry, the shipped one) and the same real images
    # as the 64 px models. Memorisation compares at the model's own side.
    judged = data if px == resolution else replace(data, resolution=px, splits={})
    timings: dict[str, float] = {}
    guided = (
        f", label guidance {describe_label_guidance(G.label_guidance)}" if is_guided(G.label_guidance) else ""
    )
    if G.label_variation and G.label_variation_scale != 1.0:
        guided += f", label variation scale {describe_label_variation_scale(G.label_variation_scale)}"
    progress(f"{name}: {resolution} px{guided}, judged against {cohort} of {data_dir}")
    evaluation: dict = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": name,
        "label_guidance": G.label_guidance,
        **({"label_variation_scale": G.label_variation_scale} if G.label_variation else {}),
        "data": describe_data(Path(data_dir), tuple(names)),
        "split": f"patient-disjoint {fractions}, hash seed {split_seed}: the training run's split",
        "cohort": {"name": cohort, "patient_prefixes": list(prefixes)},
        "options": {**asdict(opts), "checks": list(opts.checks)},
    }
    if run := config.get("training"):  # a run's generator/: how far it had got
        keys = ("kimg", "total_kimg", "complete", "reached_resolution")
        evaluation["training"] = {k: run[k] for k in keys if k in run}
    figures: list[str] = []
    if "memorisation" in checks:
        t0 = time.perf_counter()
        memo_seed = stream_seed(opts.seed, STREAM_MEMORISATION)
        train, test = data.split("train"), data.split("test")
        memo, memo_figure = memorisation(
            generate, G.latent_dim, train, test, resolution, opts.count, memo_seed, progress=progress
        )
        memo_figure.save(folder / "eval_memorisation.png")
        figures.append("eval_memorisation.png")
        timings["memorisation_s"] = time.perf_counter() - t0
        evaluation["memorisation"] = memo
        lo, hi = memo["flagged_fraction_interval_95"]
        progress(
            f"memorisation: {memo['flagged']} of {opts.count} generated images above the real-vs-real 99.9th "
            f"percentile {memo['metric']} {memo['threshold_real_p99_9']}: "
            f"{100 * memo['flagged_fraction']:.2f} % (95 % interval {100 * lo:.2f}-{100 * hi:.2f} %) against "
            f"the held-out real images' {100 * memo['heldout_flagged_fraction']:.2f} % "
            f"({timings['memorisation_s']:.0f} s)"
        )
        progress(
            f"  the other tail: {100 * memo['below_heldout_min_fraction']:.1f} % of them are less like any "
            f"training image than every held-out image is ({100 * memo['below_heldout_p1_fraction']:.1f} % "
            "below the held-out images' 1st percentile, where 1 % of those lie)"
        )
    if checks & {"classifier", "sweep", "collapse"}:
        t0 = time.perf_counter()
        real, info = real_trained_classifier(judged, px, opts, progress)
        cache_file = info["file"]
        if cache_file:  # recorded within the cache folder, not as a path on this machine
            info = {**info, "file": Path(cache_file).relative_to(classifier_cache.cache_root()).as_posix()}
        evaluation["real_classifier"] = info
        timings["classifier_real_s"] = time.perf_counter() - t0
    if "classifier" in checks:

        def real_for(seed: int) -> clf.TrainResult:
            return real_trained_classifier(judged, px, replace(opts, seed=seed), progress)[0]

        results, check_figures = classifier_checks(
            generate, G.latent_dim, names, real, judged.split("train"), judged.split("val"),
            judged.split("test"), px, opts, timings, progress, real_for,
        )  # fmt: skip
        for figure_name, image in check_figures.items():
            image.save(folder / figure_name)
        figures += list(check_figures)
        evaluation["classifier_checks"] = results
    if "sweep" in checks:
        t0 = time.perf_counter()
        evaluation["controllability"] = controllability(generate, G.latent_dim, names, real.model, px, opts)
        evaluation["controllability"]["real_reference"] = cohort_score_gap(judged, real.model, px, cache_file)
        timings["sweep_s"] = time.perf_counter() - t0
        _print_sweep(evaluation["controllability"], progress)
    if "collapse" in checks:
        t0 = time.perf_counter()
        spread = cohort_spread(judged, real.model, px, cache_file)
        evaluation["collapse"] = collapse(generate, G.latent_dim, names, real.model, px, spread, opts)
        timings["collapse_s"] = time.perf_counter() - t0
        _print_collapse(evaluation["collapse"], progress)
    if "pictures" in checks:
        t0 = time.perf_counter()
        figures += pictures(G, names, opts.seed, folder)
        timings["pictures_s"] = time.perf_counter() - t0
    evaluation["cohort"]["images"] = {**judged.images_by_split(), **data.images_by_split()}
    evaluation["figures"] = sorted(figures)
    evaluation["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    progress("timings (s): " + ", ".join(f"{k.removesuffix('_s')} {v:.0f}" for k, v in timings.items()))

    (folder / "evaluation.json").write_text(json.dumps(evaluation, indent=1))
    if model is not None and out_dir is None:
        card = ModelCard.model_validate(model.card())
        card.evaluation = _card_summary(evaluation, opts)
        card.files["evaluation"] = "evaluation.json"
        (model.path / "model_card.json").write_text(card.model_dump_json(indent=1))
        (model.path / "model_card.md").write_text(card_markdown(card))
        write_sums(model.path)
        open_model(model.ref, store or store_root())  # what was written verifies
    return evaluation
