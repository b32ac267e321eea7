"""The onnxruntime backend (the one place that imports onnxruntime): the model's ONNX graph in-process,
on the CPU or, with `onnxruntime-gpu` installed in place of `onnxruntime`, on a CUDA GPU.

Every call runs the graph on chunks of CHUNK rows, image i always at row i % CHUNK: on an Intel Xeon
with AVX-512 (no BF16) onnxruntime rounded some pixels of batch 1 a grey level away from batch 8 of the
same images (an image's values depend on its row in the batch there), so a job run with
THORAX_BATCH_SIZE=1 (as the Dask test's workers are) wrote other bytes than the same job at batch 8. A
fixed shape and a fixed row keep an image the same whatever the gateway's batch size."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.backends import BackendError, to_grey
from thorax.latents import latents_for

CHUNK = 16  # images per graph run
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

    def __init__(
        self, onnx_path: Path, latent_dim: int, threads: int, device: str = "cpu", chunk: int = CHUNK
    ) -> None:
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
        self.latent_dim, self.chunk = latent_dim, chunk

    def generate(self, seed: int, indices: list[int], labels: np.ndarray) -> np.ndarray:
        """Image `i` always runs at row i % chunk of a chunk of `chunk` rows (the others zero): on an Intel
        Xeon with AVX-512 onnxruntime gave an image other float values at rows 0 and 8 than at row 7 of
        the same chunk, so its row must not depend on how a job is cut into batches. An index repeated
        in one call (one latent, other labels) goes to a run of its own."""
        z = latents_for(seed, indices, self.latent_dim)  # [N, latent_dim]
        labels = labels.astype(np.float32)
        runs: list[tuple[int, dict[int, int]]] = []  # (chunk number, {row: position in this call})
        for position, index in enumerate(indices):
            chunk, row = divmod(index, self.chunk)
            run = next((taken for k, taken in runs if k == chunk and row not in taken), None)
            if run is None:  # the chunk's first image, or its row is taken by a repeated index
                run = {}
                runs.append((chunk, run))
            run[row] = position
        out: list[np.ndarray | None] = [None] * len(indices)
        for _, taken in runs:
            rows, positions = list(taken), list(taken.values())
            z_run = np.zeros((self.chunk, z.shape[1]), np.float32)
            labels_run = np.zeros((self.chunk, labels.shape[1]), np.float32)
            z_run[rows], labels_run[rows] = z[positions], labels[positions]
            (images,) = self.session.run(["images"], {"z": z_run, "labels": labels_run})  # [chunk,1,H,W]
            grey = to_grey(images[rows])
            for image, position in zip(grey, positions, strict=True):
                out[position] = image
        return np.stack(out)  # type: ignore[arg-type]

    def close(self) -> None:
        self.session = None
