"""What the benchmarks share: the machine's description, its matrix-multiply peak measured in the
same run as anything compared with it, the FLOPs of a generator, a timing loop and grey-level agreement.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from training.networks import EqualizedConv2d, EqualizedLinear, Generator

FLAGS_SHOWN = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def cpu_flags_shown() -> str:
    """The flags that decide matrix-multiply speed: those present, and those missing marked with a `-`."""
    from service.backends import cpu_flags

    flags = cpu_flags()
    return " ".join(f if f in flags else f"-{f}" for f in FLAGS_SHOWN)


def neighbours_note() -> str:
    """The load beside us: a benchmark on a shared 2-core machine says what else was running."""
    load1, _, _ = os.getloadavg()
    busy = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and proc.name != str(os.getpid()):
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if "thorax train" in cmd:
                busy.append("a `thorax train` run" + (" (stopped)" if state == "T" else ""))
    return f"load average {load1:.2f}, {os.cpu_count()} cores" + (f"; beside {busy[0]}" if busy else "")


def best_of(fn: Callable[[], object], work: float, seconds: float, windows: int = 3) -> float:
    """The best rate (work per second) of `fn` over `windows` timing windows of seconds / windows each,
    after one warm-up call: on a shared machine the best window is the least disturbed one."""
    fn()
    best = 0.0
    for _ in range(windows):
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / windows or done < 2:
            fn()
            done += 1
        best = max(best, work * done / (time.perf_counter() - t0))
    return best


def matmul_peak(dtype: str, threads: int, seconds: float = 1.0) -> tuple[float, str]:
    """(GFLOP/s, what gave it): the best square matrix multiply of torch (MKL / oneDNN) and OpenVINO
    (oneDNN, AMX where there is one) at 1024, 2048 and 4096, in "fp32" or "bf16"."""
    import openvino as ov

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    best, source = 0.0, ""
    for n in (1024, 2048, 4096):
        a, b = torch.randn(n, n), torch.randn(n, n)
        if dtype == "bf16":
            a, b = a.bfloat16(), b.bfloat16()
        gflop = 2 * n**3 / 1e9
        found = best_of(lambda a=a, b=b: torch.mm(a, b), gflop, seconds)
        if found > best:
            best, source = found, f"torch {n}"
        x = ov.opset13.parameter([n, n], ov.Type.f32)
        weights = ov.opset13.constant(np.random.default_rng(0).standard_normal((n, n), np.float32))
        precision = "bf16" if dtype == "bf16" else "f32"
        config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": precision,
                  "ENABLE_CPU_PINNING": False}  # fmt: skip
        compiled = ov.Core().compile_model(
            ov.Model([ov.opset13.matmul(x, weights, False, False)], [x]), "CPU", config
        )
        request, data = compiled.create_infer_request(), np.ones((n, n), np.float32)
        found = best_of(lambda request=request, data=data: request.infer([data]), gflop, seconds)
        if found > best:
            best, source = found, f"openvino {n}"
    torch.set_num_threads(previous)
    return best, source


def generator_gflop(G: Generator) -> float:
    """GFLOP per image of the generator's convolutions and dense layers (2 per multiply-add); the
    element-wise work (pixel norm, activations, upsampling) is left out, as in a roofline."""
    total = 0

    def count(module, inputs, output) -> None:
        nonlocal total
        if isinstance(module, EqualizedConv2d):
            in_channels, k = module.weight.shape[1], module.weight.shape[2]
            total += 2 * output.numel() * in_channels * k * k
        else:
            total += 2 * output.numel() * module.weight.shape[1]

    hooks = [
        m.register_forward_hook(count)
        for m in G.modules()
        if isinstance(m, EqualizedConv2d | EqualizedLinear)
    ]
    with torch.no_grad():
        G(torch.zeros(1, G.latent_dim), torch.zeros(1, G.num_labels))
    for hook in hooks:
        hook.remove()
    return total / 1e9


def rate(fn: Callable[[], object], batch: int, seconds: float) -> float:
    """Images/s of `fn`, which makes `batch` images a call: the best of three windows."""
    return best_of(fn, batch, seconds)


def agreement(images: np.ndarray, reference: np.ndarray) -> tuple[int, float]:
    """(largest grey-level difference, share of pixels within 1 grey level) of uint8 images."""
    diff = np.abs(images.astype(np.int16) - reference.astype(np.int16))
    return int(diff.max()), float((diff <= 1).mean())
