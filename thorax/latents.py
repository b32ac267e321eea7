"""Per-image latents from a counter-based generator keyed by (seed, image index).

Image ``i`` of a job with seed ``s`` always gets the same latent, whatever the batch size, the
number of workers or the order of work, because no random stream is shared between images.
Numpy only, so that the gateway can use it without torch.
"""

from __future__ import annotations

import numpy as np

_MASK64 = (1 << 64) - 1


def latent_for(seed: int, index: int, latent_dim: int) -> np.ndarray:
    """The standard-normal latent of image ``index`` under ``seed``: float32 [latent_dim]."""
    if seed < 0 or index < 0:
        raise ValueError("seed and index must be non-negative")
    key = np.array([seed & _MASK64, index & _MASK64], dtype=np.uint64)
    rng = np.random.Generator(np.random.Philox(key=key))
    return rng.standard_normal(latent_dim, dtype=np.float32)


def latents_for(seed: int, indices: range | list[int], latent_dim: int) -> np.ndarray:
    """Latents of several images: float32 [len(indices), latent_dim]."""
    out = np.empty((len(indices), latent_dim), dtype=np.float32)
    for row, index in enumerate(indices):
        out[row] = latent_for(seed, index, latent_dim)
    return out
