"""Images from a generator: 8-bit conversion, sample grids, and the fixed grid latents of a run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from thorax.latents import latents_for
from thorax.pictures import tile_grid
from training.networks import Generator

PASS_IMAGES = 16  # images in every forward pass of `generate_fixed`


@torch.no_grad()
def generate_fixed(
    G: Generator, z: torch.Tensor, labels: torch.Tensor, chunk: int = PASS_IMAGES
) -> torch.Tensor:
    """G(z, labels) computed in passes of exactly `chunk` images (the last one padded with zeros).

    CPU kernels are chosen by the batch's shape, and some (oneDNN's on AVX-512 CPUs, for example) round
    differently for another batch size, so an image would change with the batch it was made in. In
    passes of one fixed size it is the same image whatever the caller's batch."""
    out = []
    for start in range(0, len(z), chunk):
        zc, lc = z[start : start + chunk], labels[start : start + chunk]
        n = len(zc)
        if n < chunk:
            zc = torch.cat([zc, zc.new_zeros(chunk - n, *zc.shape[1:])])
            lc = torch.cat([lc, lc.new_zeros(chunk - n, *lc.shape[1:])])
        out.append(G(zc, lc)[:n])
    return torch.cat(out)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N, 1, H, W] in about [-1, 1] -> uint8 [N, H, W] (clamped, rounded)."""
    x = images.detach().float().clamp(-1, 1).add(1).mul(127.5).round()
    return x[:, 0].to(torch.uint8).cpu().numpy()


def grid_image(tiles: np.ndarray, pad: int = 2) -> Image.Image:
    """uint8 [rows, cols, H, W] -> one grey image with `pad` black pixels between tiles."""
    return Image.fromarray(tile_grid(tiles, pad), mode="L")


def grid_conditions(label_names: tuple[str, ...] | list[str]) -> tuple[list[str], torch.Tensor]:
    """The rows of a sample grid: no finding (all zeros), then each label alone at 1.0."""
    n = len(label_names)
    rows = torch.cat([torch.zeros(1, n), torch.eye(n)])  # [1 + L, L]
    return ["No finding", *label_names], rows


@torch.no_grad()
def sample_grid(
    G: Generator, seed: int, columns: int, level: int | None = None, alpha: float = 1.0, upscale_to: int = 0
) -> Image.Image:
    """One row per condition (no finding, then each label), one column per fixed latent.

    Column c uses latent (seed, c), so the same column shows the same pseudo-patient in every row and
    at every stage. Low-resolution stages can be enlarged (nearest) to `upscale_to` pixels per tile.
    """
    _, conditions = grid_conditions([str(i) for i in range(G.num_labels)])
    device = next(G.parameters()).device
    z = torch.from_numpy(latents_for(seed, range(columns), G.latent_dim)).to(device)  # [C, Z]
    rows = []
    for cond in conditions:
        images = G(z, cond.expand(columns, -1).contiguous().to(device), level, alpha)  # [C, 1, r, r]
        if upscale_to and images.shape[-1] < upscale_to:
            images = torch.nn.functional.interpolate(images, size=upscale_to, mode="nearest")
        rows.append(to_uint8(images))
    return grid_image(np.stack(rows))


def write_pngs(images: np.ndarray, out_dir: Path, first_index: int) -> list[str]:
    """uint8 [N, H, W] -> `<index:06d>.png` files; returns their names."""
    names = []
    for offset, pixels in enumerate(images):
        name = f"{first_index + offset:06d}.png"
        Image.fromarray(pixels, mode="L").save(out_dir / name, optimize=False)
        names.append(name)
    return names
