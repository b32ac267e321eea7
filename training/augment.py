"""Differentiable augmentation of the critic's inputs, for training on small data.

The discriminator sees every image (real and generated alike, in its own step and in the
generator's) through the same random augmentations, so it cannot memorise the few real images,
while the generator still learns the un-augmented distribution: each operation is applied to both
sides and is differentiable, so its gradient reaches the generator (Zhao et al. 2020, DiffAugment;
Karras et al. 2020, ADA). No flips: left and right anatomy differ in a chest radiograph.

Operations, each applied to an image with probability `p`:
- translation by up to 1/8 of the side (zero padding: radiographs have black borders);
- cutout of a square of half the side at a random place;
- brightness (add up to +-0.2 in [-1, 1] units) and contrast (scale about the image mean by 0.75..1.33).

`AdaptiveStrength` tunes `p` in the manner of ADA from the overfitting signal
r_t = E[sign(D(real) - mean D(fake))]: the share of real images the critic scores above the average
generated one, mapped to -1..1. It rises towards 1 when the critic tells the training images from
the generated ones too easily; `p` goes up while r_t is above its target and down while below.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _chance(n: int, p: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return (torch.rand(n, generator=generator) < p).to(device)  # [N] bool


def translate(x: torch.Tensor, p: float, generator: torch.Generator, ratio: float = 0.125) -> torch.Tensor:
    """Shift each chosen image by up to `ratio` of its side in x and y, zero-padded."""
    n, _, h, w = x.shape
    max_shift = max(1, round(h * ratio))
    shift = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator)
    shift = shift * _chance(n, p, generator, torch.device("cpu")).unsqueeze(1)
    pad = (max_shift,) * 4
    padded = F.pad(x, pad, value=-1.0)  # [N, C, H + 2s, W + 2s], black as a radiograph's border
    rows = (torch.arange(h).view(1, h) + max_shift - shift[:, :1]).to(x.device)  # [N, H]
    cols = (torch.arange(w).view(1, w) + max_shift - shift[:, 1:]).to(x.device)  # [N, W]
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    out = padded.permute(0, 2, 3, 1)[batch, rows.unsqueeze(2), cols.unsqueeze(1)]  # [N, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous(memory_format=_format_of(x))


def cutout(x: torch.Tensor, p: float, generator: torch.Generator, ratio: float = 0.5) -> torch.Tensor:
    """Blank a square of `ratio` of the side at a random place in each chosen image."""
    n, _, h, w = x.shape
    size = max(1, round(h * ratio))
    top = torch.randint(0, h - size + 1, (n, 1, 1), generator=generator)
    left = torch.randint(0, w - size + 1, (n, 1, 1), generator=generator)
    ys, xs = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
    hole = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)  # [N, H, W]
    hole = hole & _chance(n, p, generator, torch.device("cpu")).view(n, 1, 1)
    keep = (~hole).to(x.device, x.dtype).unsqueeze(1)  # [N, 1, H, W]
    return x * keep - (1.0 - keep)  # the hole is black (-1), like the padding of a radiograph


def brightness_contrast(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Add a brightness offset, then scale the contrast about each image's mean."""
    n = x.shape[0]
    chosen = _chance(n, p, generator, torch.device("cpu")).float()
    offset = (torch.rand(n, generator=generator) - 0.5) * 0.4 * chosen  # +-0.2
    log_gain = (torch.rand(n, generator=generator) * 2 - 1) * 0.2877 * chosen  # 0.75..1.33
    offset = offset.to(x.device, x.dtype).view(n, 1, 1, 1)
    gain = log_gain.exp().to(x.device, x.dtype).view(n, 1, 1, 1)
    x = x + offset
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * gain + mean


def _format_of(x: torch.Tensor) -> torch.memory_format:
    return (
        torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    )


def augment(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Every operation, each with probability `p` per image; identity at p = 0. x: [N, 1, R, R]."""
    if p <= 0:
        return x
    x = translate(x, p, generator)
    x = cutout(x, p, generator)
    return brightness_contrast(x, p, generator).contiguous(memory_format=_format_of(x))


class AdaptiveStrength:
    """ADA's controller: `p` moves by `step` per image shown, up while r_t > target, else down.

    Args:
        target:      the r_t it aims at (0.6 in ADA).
        speed_kimg:  kimg over which `p` could go from 0 to 1 (500 in ADA; shorter runs want less).
        interval:    steps between adjustments; r_t is averaged over them.
        p_max:       ceiling of `p`.
        p:           the strength to start from (a fixed strength when `target` is None).
    """

    def __init__(
        self,
        target: float | None = 0.6,
        speed_kimg: float = 100.0,
        interval: int = 4,
        p_max: float = 0.8,
        p: float = 0.0,
    ) -> None:
        self.target = target
        self.speed_kimg = speed_kimg
        self.interval = interval
        self.p_max = p_max
        self.p = p
        self.rt = 0.0  # the latest averaged r_t, for progress lines
        self._signs: list[float] = []
        self._images = 0

    @staticmethod
    def signal(real_score: torch.Tensor, fake_score: torch.Tensor) -> float:
        """r_t of one batch: E[sign(D(real) - mean D(fake))], in -1..1."""
        return torch.sign(real_score.float() - fake_score.float().mean()).mean().item()

    def update(self, real_score: torch.Tensor, fake_score: torch.Tensor) -> None:
        if self.target is None:
            return
        self._signs.append(self.signal(real_score, fake_score))
        self._images += real_score.shape[0]
        if len(self._signs) < self.interval:
            return
        self.rt = sum(self._signs) / len(self._signs)
        delta = self._images / (self.speed_kimg * 1000)
        self.p = min(self.p_max, max(0.0, self.p + (delta if self.rt > self.target else -delta)))
        self._signs, self._images = [], 0

    def state(self) -> dict:
        return {"p": self.p, "rt": self.rt, "signs": self._signs, "images": self._images}

    def load_state(self, state: dict) -> None:
        """A checkpoint's controller state. A fixed strength (no target) is the config's, whatever the
        checkpoint's was, so a run started from another run's checkpoint augments as it is told to."""
        if self.target is not None:
            self.p = state["p"]
        self.rt = state["rt"]
        self._signs, self._images = list(state["signs"]), state["images"]
