"""Generator backends: onnxruntime in-process (the default) and TorchServe over HTTP.

Both take (seed, image indices, label vectors) and answer uint8 images [N, H, W] at the model's
resolution, quantised as round((clamp(x, -1, 1) + 1) * 127.5), so that they agree within one grey level.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from service.settings import Settings
from thorax.store import StoredModel


class BackendError(Exception):
    """The backend failed to produce images (TorchServe down, a bad answer)."""


class Backend(Protocol):
    name: str

    def generate(self, seed: int, indices: list[int], labels: np.ndarray) -> np.ndarray:
        """uint8 [len(indices), H, W] for float32 labels [len(indices), L]."""

    def close(self) -> None: ...


def open_backend(model: StoredModel, settings: Settings) -> Backend:
    if settings.backend == "torchserve":
        from service.backends.torchserve import TorchServeBackend

        if not settings.torchserve_url:
            raise BackendError("THORAX_BACKEND=torchserve needs THORAX_TORCHSERVE_URL")
        return TorchServeBackend(model, settings.torchserve_url)
    from service.backends.onnx import OnnxBackend

    return OnnxBackend(model, settings.onnx_threads)
