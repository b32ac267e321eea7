"""Generator backends, all behind one interface: onnxruntime in-process on the CPU or on a CUDA GPU,
OpenVINO in-process (fp32, or bf16 on CPUs that have it), and TorchServe over HTTP.

Each takes (seed, image indices, label vectors) and answers uint8 images [N, H, W] at the model's
resolution, quantised as round((clamp(x, -1, 1) + 1) * 127.5) (`to_grey`). A backend gives the same
image for the same (seed, index, labels) whatever the batch size; two backends agree within the
tolerance the README states (bench/inference_speed.py measures it).

`THORAX_BACKEND=auto` (the default) chooses at start, by what the machine has: the CUDA GPU when
onnxruntime sees one, else OpenVINO in bf16 on a CPU with AVX512-BF16 or AMX-BF16 (and OpenVINO
installed), else onnxruntime fp32. A job records the backend and precision that made it (in its spec),
and its shards are always made with those.
"""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:  # annotations only: the GPU benchmark imports this module where pydantic is absent
    from service.settings import Settings
    from thorax.store import StoredModel

log = logging.getLogger("thorax.service")

BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs that compute bf16 natively


class BackendError(Exception):
    """The backend failed to produce images (TorchServe down, a bad answer, a backend not installed)."""


class Backend(Protocol):
    name: str  # onnxruntime, onnxruntime-cuda, openvino, torchserve
    precision: str  # fp32 or bf16

    def generate(self, seed: int, indices: list[int], labels: np.ndarray) -> np.ndarray:
        """uint8 [len(indices), H, W] for float32 labels [len(indices), L]."""

    def close(self) -> None: ...


def to_grey(images: np.ndarray) -> np.ndarray:
    """float [N, 1, H, W] in about [-1, 1] -> uint8 [N, H, W], the one quantisation every backend uses."""
    return np.round((np.clip(images[:, 0], -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_bf16() -> bool:
    return any(flag in cpu_flags() for flag in BF16_FLAGS)


def choose(settings: Settings) -> tuple[str, str]:
    """(backend, precision) that `settings` ask for, with `auto` resolved for this machine."""
    backend, precision = settings.backend, settings.precision
    if backend == "auto":
        from service.backends.onnx import cuda_available

        if cuda_available():
            backend = "onnxruntime-cuda"
        elif cpu_has_bf16() and _openvino_installed() and precision in ("auto", "bf16"):
            backend = "openvino"
        else:
            backend = "onnxruntime"
    if precision == "auto":
        precision = "bf16" if backend == "openvino" and cpu_has_bf16() else "fp32"
    if precision == "bf16" and backend != "openvino":
        raise BackendError(f"THORAX_PRECISION=bf16 needs THORAX_BACKEND=openvino (or auto), not {backend}")
    return backend, precision


def open_backend(
    model: StoredModel, settings: Settings, backend: str | None = None, precision: str | None = None
) -> Backend:
    """The model's backend: `backend` and `precision` when given (a job's recorded ones), else the
    settings' choice."""
    if backend is None:
        backend, precision = choose(settings)
    precision = precision or "fp32"
    architecture = model.card()["architecture"]
    latent_dim = architecture["latent_dim"]
    if backend == "torchserve":
        from service.backends.torchserve import TorchServeBackend

        if not settings.torchserve_url:
            raise BackendError("THORAX_BACKEND=torchserve needs THORAX_TORCHSERVE_URL")
        opened: Backend = TorchServeBackend(model, settings.torchserve_url)
    elif backend == "openvino":
        if not _openvino_installed():
            raise BackendError("the openvino backend is not installed: pip install 'thorax[service]'")
        from service.backends.openvino import OpenVinoBackend, fp32_side

        side = fp32_side(architecture["resolution"])
        opened = OpenVinoBackend(model.file("onnx"), latent_dim, settings.onnx_threads, precision, side)
    elif backend in ("onnxruntime", "onnxruntime-cuda"):
        from service.backends.onnx import OnnxBackend

        device = "cuda" if backend == "onnxruntime-cuda" else "cpu"
        opened = OnnxBackend(model.file("onnx"), latent_dim, settings.onnx_threads, device)
    else:
        raise BackendError(f"no backend named {backend!r}")
    log.info("model %s: backend %s, precision %s", model.ref, opened.name, opened.precision)
    return opened


def _openvino_installed() -> bool:
    from importlib.util import find_spec

    return find_spec("openvino") is not None
