"""The pathology classifier behind the paper's classifier-based checks, trained here on the real data.

No network weights can be downloaded here (no ImageNet or Inception features), so every check that
needs a classifier trains one: on the real training split for train-on-synthetic-test-on-real, label
fidelity, the controllability sweep, the label correlation matrix and the feature space of the
Fréchet distance and KID; on real versus generated images for the two-sample test.

Two architectures:
- `small` (the default): four blocks of two 3x3 convolutions with batch norm and ReLU (16, 32, 64,
  128 channels), 2x2 max pooling between them, global average pooling to a 128-d feature, one linear
  layer to the logits. About 0.3M parameters and 0.1 GFLOP an image at 64 px, small enough for fifteen
  epochs of the 1,812 training images in a minute or two on 2 CPU cores (twice the width was 4x slower).
- `densenet121`: MONAI's `DenseNet121` with one input channel (the paper's classifier family), about
  7M parameters and some 50x slower here; for a GPU or a long run (`pip install monai`).

Training: Adam (lr 1e-3, weight decay 1e-4), per-label sigmoid cross-entropy, random shifts of up to
1/16 of the side and small brightness/contrast changes as augmentation (no flips: the heart is on the
left), cosine learning-rate decay; the epoch with the best mean validation AUC is kept, and its batch
norm statistics are then recomputed over the training images.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from thorax.errors import UserError
from training.metrics import roc_auc

ARCHITECTURES = ("small", "densenet121")


class SmallCNN(nn.Module):
    """Four conv blocks -> global average pool -> linear. `features` gives the pooled 8 * width vector.

    Args:
        outputs: number of logits (14 labels, or 1 for real-vs-generated).
        width:   channels of the first block; each block doubles it.
    """

    def __init__(self, outputs: int, width: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for i in range(4):
            out = width * 2**i
            for j in range(2):
                layers += [nn.Conv2d(channels if j == 0 else out, out, 3, padding=1, bias=False)]
                layers += [nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            channels = out
            if i < 3:
                layers.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*layers)
        self.feature_dim = channels
        self.head = nn.Linear(channels, outputs)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=(2, 3))  # [N, 8 * width]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # [N, outputs]


class DenseNet(nn.Module):
    """MONAI's DenseNet121 (one input channel) with the same `features` / `forward` interface."""

    def __init__(self, outputs: int) -> None:
        super().__init__()
        try:
            from monai.networks.nets import DenseNet121
        except ImportError:
            raise UserError("--classifier densenet121 needs MONAI: pip install monai") from None
        net = DenseNet121(spatial_dims=2, in_channels=1, out_channels=outputs)
        self.body, self.head = net.features, net.class_layers.out
        self.feature_dim = self.head.in_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x)).mean(dim=(2, 3))  # [N, 1024]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build(architecture: str, outputs: int) -> nn.Module:
    if architecture == "small":
        return SmallCNN(outputs)
    if architecture == "densenet121":
        return DenseNet(outputs)
    raise UserError(f"unknown classifier {architecture!r}; choose one of {', '.join(ARCHITECTURES)}")


@dataclass
class TrainResult:
    model: nn.Module
    best_epoch: int
    val_auc: float  # mean over the validation labels with both classes; nan without validation
    seconds: float
    history: list[dict]


def _augment(x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Random shift (reflect padding) and brightness/contrast jitter on images in [-1, 1]: [N, 1, R, R]."""
    n, _, r, _ = x.shape
    pad = max(1, r // 16)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dx, dy = torch.randint(0, 2 * pad + 1, (2, n), generator=rng)
    rows = torch.arange(r)
    out = torch.stack(
        [padded[i, :, dy[i] + rows][:, :, dx[i] + rows] for i in range(n)]
    )  # [N, 1, R, R]  # fmt: skip
    contrast = 1 + 0.1 * (torch.rand(n, 1, 1, 1, generator=rng) * 2 - 1)
    brightness = 0.1 * (torch.rand(n, 1, 1, 1, generator=rng) * 2 - 1)
    return (out * contrast + brightness).clamp(-1, 1)


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, images: torch.Tensor, batch: int = 64) -> None:
    """Set batch norm's running statistics to the exact averages over the training images.

    The running averages lag the weights (momentum 0.1): after a short training they are off enough that
    scores are shifted as a whole (seen here: real-vs-noise AUC 1.0 but accuracy 0.5 after 4 epochs)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches below
    model.train()
    for start in range(0, len(images), batch):
        model(images[start : start + batch].float())
    for m in norms:
        m.momentum = 0.1
    model.eval()


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch: int = 256) -> np.ndarray:
    """Sigmoid scores [N, outputs] for images [N, 1, R, R] in [-1, 1]."""
    model.eval()
    out = [torch.sigmoid(model(images[i : i + batch].float())) for i in range(0, len(images), batch)]
    return torch.cat(out).numpy()


@torch.no_grad()
def features(model: nn.Module, images: torch.Tensor, batch: int = 256) -> np.ndarray:
    """The pooled penultimate features [N, D] (the space of the Fréchet distance and KID)."""
    model.eval()
    out = [model.features(images[i : i + batch].float()) for i in range(0, len(images), batch)]
    return torch.cat(out).double().numpy()


def mean_auc(targets: np.ndarray, scores: np.ndarray) -> float:
    """Mean per-column AUC over the columns that have both classes; nan if none has."""
    aucs = [roc_auc(targets[:, j], scores[:, j]) for j in range(targets.shape[1])]
    aucs = [a for a in aucs if not math.isnan(a)]
    return float(np.mean(aucs)) if aucs else math.nan


def balanced_weights(targets: torch.Tensor) -> torch.Tensor:
    """Per-label weight of the positives, negatives / positives of targets [N, K] (at least 1; a label
    without positives gets 1): with it both classes of each label weigh alike in the loss."""
    positives = targets.float().sum(dim=0)  # [K]
    ratio = ((len(targets) - positives) / positives.clamp(min=1.0)).clamp(min=1.0)
    return torch.where(positives > 0, ratio, torch.ones_like(ratio))


def train_classifier(
    images: torch.Tensor,
    targets: torch.Tensor,
    val_images: torch.Tensor | None = None,
    val_targets: torch.Tensor | None = None,
    architecture: str = "small",
    epochs: int = 15,
    batch: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    balanced: bool = False,
) -> TrainResult:
    """Train on images [N, 1, R, R] in [-1, 1] with targets [N, K] in 0..1; keep the best validation epoch.

    `balanced` weighs each label's positives by (negatives / positives) of the training targets, so that
    both classes count alike: scores then spread around 0.5 instead of sitting near each label's prevalence.

    Deterministic for a given seed (weights, order and augmentation come from seeded generators)."""
    if architecture == "densenet121" and images.shape[-1] < 32:
        raise UserError(f"densenet121 needs images of at least 32 px (it pools 32x), not {images.shape[-1]}")
    torch.manual_seed(seed)
    model = build(architecture, targets.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(images) / batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps_per_epoch)
    rng = torch.Generator().manual_seed(seed)
    pos_weight = balanced_weights(targets) if balanced else None
    best_state, best_epoch, best_auc, history = None, epochs - 1, -math.inf, []
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(images), generator=rng)
        total = 0.0
        for start in range(0, len(images), batch):
            idx = order[start : start + batch]
            if len(idx) < 2:  # batch norm needs two images
                continue
            x = _augment(images[idx].float(), rng)
            loss = F.binary_cross_entropy_with_logits(model(x), targets[idx].float(), pos_weight=pos_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        record = {"epoch": epoch, "loss": round(total / len(images), 4)}
        if val_images is not None and val_targets is not None:
            auc = mean_auc(val_targets.numpy() >= 0.5, predict(model, val_images))
            record["val_auc"] = round(auc, 4)
            if auc > best_auc:
                best_state, best_epoch, best_auc = copy.deepcopy(model.state_dict()), epoch, auc
        history.append(record)
        if progress:
            progress(f"  epoch {epoch + 1}/{epochs}: " + ", ".join(f"{k} {v}" for k, v in record.items()))
    if best_state is not None:
        model.load_state_dict(best_state)
    recalibrate_batch_norm(model, images, batch)
    model.eval()
    return TrainResult(
        model, best_epoch, best_auc if best_state else math.nan, time.perf_counter() - t0, history
    )


__all__ = ["ARCHITECTURES", "SmallCNN", "TrainResult", "features", "mean_auc", "predict", "train_classifier"]
