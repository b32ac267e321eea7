"""The onnxruntime backend (the one place that imports onnxruntime): the model's ONNX graph in-process."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from thorax.latents import latents_for
from thorax.store import StoredModel


class OnnxBackend:
    name = "onnxruntime"

    def __init__(self, model: StoredModel, threads: int) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(model.file("onnx")), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.latent_dim = model.card()["architecture"]["latent_dim"]

    def generate(self, seed: int, indices: list[int], labels: np.ndarray) -> np.ndarray:
        z = latents_for(seed, indices, self.latent_dim)  # [N, latent_dim]
        (images,) = self.session.run(["images"], {"z": z, "labels": labels.astype(np.float32)})  # [N,1,H,W]
        return np.round((np.clip(images[:, 0], -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)

    def close(self) -> None:
        self.session = None
