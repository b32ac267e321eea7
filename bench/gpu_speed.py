"""The paper's full-size generator on a CUDA GPU at 256, 512 and 1024 px, against the paper's Tesla P100
rates (67,925, 41,379 and 4,511 images/h; issue 16's goal: at least 10x the P100 at 256 px). Prepared
for a machine with a GPU; about 10 minutes. Random weights: speed does not depend on them.

    python bench/gpu_speed.py [--resolutions 256 512 1024] [--seconds 10] [--out gpu_speed.json]

Per resolution it measures, at the largest batch of 8 / 32 / 128 that fits:
  - onnxruntime-cuda: the gateway's GPU backend (service/backends/onnx.py: fp32, no TF32), from latents
    to uint8 images, needing `onnxruntime-gpu` in place of `onnxruntime` (see pyproject.toml's `gpu`);
  - PyTorch CUDA with bf16 autocast and channels_last, the generator's own module (an upper bound
    for a bf16 GPU backend), with its agreement with PyTorch CUDA fp32 (largest grey-level difference,
    share of pixels within 1 grey level over 64 images).
It prints a table and writes the figures as JSON to --out (copy them into the README).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.roofline import agreement, generator_gflop, rate  # noqa: E402
from service.backends import to_grey  # noqa: E402
from thorax.latents import latents_for  # noqa: E402
from training.config import load_config  # noqa: E402
from training.export import export_onnx  # noqa: E402
from training.networks import Generator  # noqa: E402

P100_IMAGES_PER_HOUR = {256: 67_925, 512: 41_379, 1024: 4_511}  # the paper's Tesla P100
BATCHES = (128, 32, 8)


def paper_generator(resolution: int) -> Generator:
    cfg = load_config(f"paper{resolution}")
    torch.manual_seed(0)
    return (
        Generator(resolution, cfg.latent_dim, len(cfg.label_names), cfg.channels).eval().requires_grad_(False)
    )


def fits(fn) -> bool:
    try:
        fn()
        torch.cuda.synchronize()
        return True
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return False


def largest_batch(G: Generator) -> int:
    """The largest of BATCHES (else 1) whose forward pass fits in the GPU's memory."""
    G.cuda()
    for batch in BATCHES:
        z, labels = (
            torch.zeros(batch, G.latent_dim, device="cuda"),
            torch.zeros(batch, G.num_labels, device="cuda"),
        )
        with torch.no_grad():
            if fits(lambda z=z, labels=labels: G(z, labels)):
                return batch
    return 1


def torch_rate(G: Generator, batch: int, seconds: float, bf16: bool) -> tuple[float, np.ndarray]:
    """(images/s, uint8 images of the first 64 latents) of the generator on the GPU."""
    model = G.cuda().to(memory_format=torch.channels_last)
    z = torch.from_numpy(latents_for(1, range(batch), G.latent_dim)).cuda()
    labels = torch.zeros(batch, G.num_labels, device="cuda")

    def run(z=z, labels=labels) -> torch.Tensor:
        with torch.no_grad(), torch.autocast("cuda", torch.bfloat16, enabled=bf16):
            out = model(z, labels).float().clamp(-1, 1)
        torch.cuda.synchronize()
        return out

    speed = rate(run, batch, seconds)
    sample_z = torch.from_numpy(latents_for(2, range(64), G.latent_dim)).cuda()
    images = []
    for i in range(0, 64, 8):
        with torch.no_grad(), torch.autocast("cuda", torch.bfloat16, enabled=bf16):
            images.append(to_grey(model(sample_z[i : i + 8], labels[:1].expand(8, -1)).float().cpu().numpy()))
    return speed, np.concatenate(images)


def onnx_rate(G: Generator, batch: int, seconds: float, folder: Path) -> float | None:
    from service.backends.onnx import OnnxBackend, cuda_available

    if not cuda_available():
        return None
    path = folder / f"paper{G.resolution}.onnx"
    if not path.exists():
        export_onnx(G.cpu(), path)
    backend = OnnxBackend(path, G.latent_dim, threads=1, device="cuda", chunk=batch)  # one run
    labels = np.zeros((batch, G.num_labels), np.float32)
    return rate(lambda: backend.generate(1, list(range(batch)), labels), batch, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--resolutions", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=Path("gpu_speed.json"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA GPU here: nothing measured (this script is for a machine with one)")
    print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}")
    figures, t0 = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for resolution in args.resolutions:
            G = paper_generator(resolution)
            gflop = generator_gflop(G)
            batch = largest_batch(G)
            fp32, reference = torch_rate(G, batch, args.seconds, bf16=False)
            bf16, images = torch_rate(G, batch, args.seconds, bf16=True)
            worst, within = agreement(images, reference)
            onnx = onnx_rate(G, batch, args.seconds, Path(tmp))
            p100 = P100_IMAGES_PER_HOUR[resolution] / 3600
            row = {"resolution": resolution, "batch": batch, "gflop_per_image": gflop, "p100_images_s": p100,
                   "torch_fp32_images_s": fp32, "torch_bf16_images_s": bf16,
                   "onnxruntime_cuda_images_s": onnx, "bf16_largest_diff": worst,
                   "bf16_within_1": within}  # fmt: skip
            figures.append(row)
            best = max(v for v in (fp32, bf16, onnx) if v is not None)
            print(
                f"{resolution:5d} px, batch {batch:3d}: torch fp32 {fp32:8.1f}, bf16 {bf16:8.1f} "
                f"(diff <= {worst}, {within:.2%} within 1), onnxruntime-cuda "
                f"{'-' if onnx is None else f'{onnx:8.1f}'} images/s; best {best * 3600:,.0f} images/h "
                f"= {best / p100:.1f}x the P100 ({P100_IMAGES_PER_HOUR[resolution]:,} images/h)",
                flush=True,
            )
            G.cpu()
            torch.cuda.empty_cache()
    goal = next((r for r in figures if r["resolution"] == 256), None)
    if goal is not None:
        best = max(v for k, v in goal.items() if k.endswith("_images_s") and k != "p100_images_s" and v)
        print(f"goal: >= 10x the P100 at 256 px: {best / goal['p100_images_s']:.1f}x")
    args.out.write_text(json.dumps({"device": torch.cuda.get_device_name(), "figures": figures}, indent=1))
    print(f"({time.perf_counter() - t0:.0f} s; figures in {args.out})")


if __name__ == "__main__":
    main()
