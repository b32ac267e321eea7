"""The onnxruntime backend (the one place that imports onnxruntime): the model's ONNX graph in-process,
on the CPU or, with `onnxruntime-gpu` installed in place of `onnxruntime`, on a CUDA GPU."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.backends import BackendError, to_grey
from thorax.latents import latents_for

CUDA = "CUDAExecutionProvider"
# fp32 on the GPU too (no TF32 matrix multiplies), so that its images agree with the CPU's.
CUDA_OPTIONS = {"use_tf32": "0", "cudnn_conv_algo_search": "DEFAULT"}


@cache
def cuda_available() -> bool:
    """Whether onnxruntime can run on a CUDA GPU here: its CUDA provider is built in (onnxruntime-gpu
    lists it even on a machine without a GPU) and the NVIDIA driver shows a device."""
    return CUDA in ort.get_available_providers() and any(Path("/dev").glob("nvidia[0-9]*"))


class OnnxBackend:
    precision = "fp32"

    def __init__(self, onnx_path: Path, latent_dim: int, threads: int, device: str = "cpu") -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        if device == "cuda":
            providers: list = [(CUDA, CUDA_OPTIONS), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=providers)
        if device == "cuda" and self.session.get_providers()[0] != CUDA:
            raise BackendError("onnxruntime could not start on the CUDA GPU (is onnxruntime-gpu installed?)")
        self.name = "onnxruntime-cuda" if device == "cuda" else "onnxruntime"
        self.latent_dim = latent_dim

    def generate(self, seed: int, indices: list[int], labels: np.ndarray) -> np.ndarray:
        z = latents_for(seed, indices, self.latent_dim)  # [N, latent_dim]
        (images,) = self.session.run(["images"], {"z": z, "labels": labels.astype(np.float32)})  # [N,1,H,W]
        return to_grey(images)

    def close(self) -> None:
        self.session = None
