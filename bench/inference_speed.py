"""Generator speed against the machine's own roofline, and the faster CPU backends' agreement with
onnxruntime fp32, measured in one run:

  1. the machine: CPU model, the flags that matter, what else is running;
  2. its peak: torch's matrix multiply in fp32 and bf16 (GFLOP/s) at each thread count;
  3. for the shipped model and the paper's full-size network at 256 px (random weights: speed only),
     every backend variant's images/s, GFLOP/s and share of the fp32 and bf16 peaks, and its agreement
     with onnxruntime fp32: the largest grey-level difference and the share of pixels within 1 grey
     level (over --images images; a variant is kept if that share is at least 99 %);
  4. the fastest kept variant, which `THORAX_BACKEND=auto` should pick on this CPU.

    python bench/inference_speed.py [--threads 1 2] [--batch 32] [--seconds 4] [--images 1000]
                                    [--no-paper] [--torchserve]

Variants: PyTorch eager (fp32), onnxruntime fp32 (the default graph optimisations, then without the
layout pass, then without spinning threads), onnxruntime int8 (static QDQ quantisation, per-channel
weights, calibrated on the activations of 128 of the model's own images), OpenVINO fp32, OpenVINO bf16
on the whole graph, and OpenVINO bf16 with the blocks up to 8, 16 or 32 px in fp32 (the backend's
choice: 16 px for a 64 px model, 32 for a 128 px one). `--torchserve` adds TorchServe's HTTP path (Java
17 and `pip install -e .[torchserve]`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.roofline import (  # noqa: E402  # noqa: E402
    agreement,
    cpu_flags_shown,
    cpu_model,
    generator_gflop,
    matmul_peak,
    neighbours_note,
    rate,
)
from service.backends import cpu_has_bf16, to_grey  # noqa: E402
from service.backends.onnx import OnnxBackend  # noqa: E402
from thorax.latents import latents_for  # noqa: E402
from thorax.store import open_model  # noqa: E402
from training.checkpoint import load_generator  # noqa: E402
from training.config import load_config  # noqa: E402
from training.export import export_onnx  # noqa: E402
from training.networks import Generator  # noqa: E402

NO_LAYOUT = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # every optimisation but the NCHWc layout
KEEP = 0.99  # share of pixels within 1 grey level of onnxruntime fp32 that a variant needs


class SessionVariant:
    """An onnxruntime session with chosen options, behind the backends' generate()."""

    def __init__(self, path: Path, latent_dim: int, threads: int, level=None, spinning: bool = True) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        if level is not None:
            options.graph_optimization_level = level
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.latent_dim = latent_dim

    def generate(self, seed: int, indices: list[int], labels: np.ndarray) -> np.ndarray:
        z = latents_for(seed, indices, self.latent_dim)
        (images,) = self.session.run(["images"], {"z": z, "labels": labels})
        return to_grey(images)


class EagerVariant:
    def __init__(self, G: Generator, threads: int) -> None:
        self.G, self.threads = G, threads

    def generate(self, seed: int, indices: list[int], labels: np.ndarray) -> np.ndarray:
        torch.set_num_threads(self.threads)
        z = torch.from_numpy(latents_for(seed, indices, self.G.latent_dim))
        with torch.no_grad():
            images = self.G(z, torch.from_numpy(labels)).clamp(-1, 1).numpy()
        return to_grey(images)


def quantise_int8(path: Path, out: Path, latent_dim: int, n_labels: int) -> None:
    """Static int8 (QDQ) with per-channel weights, calibrated on the activations of the model's own
    images: 128 latents and label vectors, run through the fp32 graph by the calibrator."""
    from onnxruntime import quantization as oq

    class Images(oq.CalibrationDataReader):
        def __init__(self) -> None:
            z = latents_for(10_000, range(128), latent_dim)
            labels = (np.random.default_rng(1).random((128, n_labels)) < 0.15).astype(np.float32)
            self.batches = iter(
                [{"z": z[i : i + 16], "labels": labels[i : i + 16]} for i in range(0, 128, 16)]
            )

        def get_next(self):
            return next(self.batches, None)

    prepared = out.with_suffix(".pre.onnx")
    oq.quant_pre_process(str(path), str(prepared))
    oq.quantize_static(
        str(prepared), str(out), Images(), quant_format=oq.QuantFormat.QDQ, per_channel=True,
        activation_type=oq.QuantType.QUInt8, weight_type=oq.QuantType.QInt8,
    )  # fmt: skip


def variants(path: Path, G: Generator, threads: int, int8_path: Path | None) -> dict:
    """name -> (precision, a maker of the variant): made one at a time, so that only one holds memory."""
    latent = G.latent_dim
    found = {
        "onnxruntime": ("fp32", lambda: OnnxBackend(path, latent, threads)),  # the reference: first
        "pytorch eager": ("fp32", lambda: EagerVariant(G, threads)),
        "onnxruntime, no layout pass": ("fp32", lambda: SessionVariant(path, latent, threads, NO_LAYOUT)),
        "onnxruntime, no spinning": ("fp32", lambda: SessionVariant(path, latent, threads, spinning=False)),
    }  # fmt: skip
    if int8_path is not None:
        found["onnxruntime int8 (static)"] = ("int8", lambda: SessionVariant(int8_path, latent, threads))
    try:
        from service.backends.openvino import OpenVinoBackend, fp32_side
    except ImportError:
        print("openvino is not installed: its variants are left out")
        return found
    found["openvino"] = ("fp32", lambda: OpenVinoBackend(path, latent, threads, "fp32"))
    found["openvino bf16, whole graph"] = ("bf16", lambda: OpenVinoBackend(path, latent, threads, "bf16", 0))
    for up_to in (s for s in (8, 16, 32, 64) if s < G.resolution):  # at the side itself nothing is bf16
        mark = " (backend)" if up_to == fp32_side(G.resolution) else ""
        found[f"openvino bf16, fp32 to {up_to} px{mark}"] = (
            "bf16",
            lambda up_to=up_to: OpenVinoBackend(path, latent, threads, "bf16", up_to),
        )
    return found


def images_of(variant, latent_seed: int, labels: np.ndarray, batch: int) -> np.ndarray:
    n = len(labels)
    return np.concatenate([
        variant.generate(latent_seed, list(range(i, min(i + batch, n))), labels[i : i + batch])
        for i in range(0, n, batch)
    ])  # fmt: skip


def measure_model(
    title: str, path: Path, G: Generator, args, peaks: dict, n_images: int, int8: bool
) -> list[dict]:
    gflop = generator_gflop(G)
    labels = (np.random.default_rng(7).random((n_images, G.num_labels)) < 0.15).astype(np.float32)
    int8_path = None
    if int8:
        int8_path = (
            Path(args.workdir) / f"{path.stem}.int8.onnx"
        )  # never beside the model: the store is verified
        quantise_int8(path, int8_path, G.latent_dim, G.num_labels)
    print(f"\n## {title}: {G.resolution} px, {gflop:.2f} GFLOP per image; agreement over {n_images} images\n")
    print("| variant | precision | threads | images/s | GFLOP/s | of fp32 peak | of bf16 peak "
          "| largest diff | within 1 grey level | kept |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows, reference = [], None
    for threads in args.threads:
        for name, (precision, make) in variants(path, G, threads, int8_path).items():
            variant = make()
            batch_labels = labels[: args.batch]

            def call(v=variant, batch_labels=batch_labels) -> None:
                v.generate(1, list(range(args.batch)), batch_labels)

            speed = rate(call, args.batch, args.seconds)
            if threads == args.threads[0]:  # images do not change with the thread count
                images = images_of(variant, 2, labels, args.batch)
                if name == "onnxruntime":
                    reference = images
                worst, within = agreement(images, reference) if reference is not None else (0, 1.0)
                rows.append({"name": name, "precision": precision, "worst": worst, "within": within})
            row = next(r for r in rows if r["name"] == name)
            row[f"speed{threads}"] = speed
            kept = "yes" if row["within"] >= KEEP else "no"
            print(
                f"| {name} | {precision} | {threads} | {speed:.1f} | {speed * gflop:.0f} "
                f"| {speed * gflop / peaks['fp32', threads]:.0%} "
                f"| {speed * gflop / peaks['bf16', threads]:.0%} "
                f"| {row['worst']} | {row['within']:.2%} | {kept} |",
                flush=True,
            )
            del variant
    return rows


def paper_network(resolution: int, folder: Path) -> tuple[Path, Generator]:
    """The paper's full-size generator at `resolution` with random weights, exported to ONNX."""
    cfg = load_config(f"paper{resolution}")
    torch.manual_seed(0)
    G = Generator(resolution, cfg.latent_dim, len(cfg.label_names), cfg.channels).eval().requires_grad_(False)
    path = folder / f"paper{resolution}.onnx"
    export_onnx(G, path)
    return path, G


def torchserve_rates(model, batches: list[int], threads: int, seconds: float) -> None:
    from tests.servers import torchserve

    n_labels = len(model.card()["labels"]["names"])
    with (
        tempfile.TemporaryDirectory() as tmp,
        torchserve(model.file("mar"), Path(tmp), threads=threads) as url,
    ):
        for batch in batches:
            body = json.dumps({"seed": 0, "indices": list(range(batch)), "labels": [0.0] * n_labels}).encode()

            def http(body=body) -> None:
                request = urllib.request.Request(
                    f"{url}/predictions/{model.name}", data=body, headers={"Content-Type": "application/json"}
                )
                with urllib.request.urlopen(request, timeout=120) as resp:
                    resp.read()

            print(
                f"torchserve, batch {batch}, {threads} thread(s): {rate(http, batch, seconds):.1f} images/s"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="NAME[/VERSION] (default: the store's default)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=32, help="images per call (the full-size network: 8)")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument(
        "--images", type=int, default=1000, help="images compared for agreement (shipped model)"
    )
    parser.add_argument("--paper-images", type=int, default=64, help="images compared, full-size network")
    parser.add_argument("--no-paper", action="store_true", help="leave out the full-size network")
    parser.add_argument("--no-int8", action="store_true")
    parser.add_argument("--torchserve", action="store_true")
    args = parser.parse_args()

    import openvino  # noqa: F401 - its version is printed; the bench needs it

    print(f"# Inference against the roofline\n\n{cpu_model()}; flags: {cpu_flags_shown()}")
    print(f"{neighbours_note()}; bf16 in hardware: {cpu_has_bf16()}")
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, openvino {openvino.__version__}")
    t0 = time.perf_counter()
    peaks = {}
    print("\n| peak: best square matrix multiply | threads | GFLOP/s | from |\n|---|---|---|---|")
    for threads in args.threads:
        for dtype in ("fp32", "bf16"):
            peaks[dtype, threads], source = matmul_peak(dtype, threads)
            print(f"| {dtype} | {threads} | {peaks[dtype, threads]:.0f} | {source} |", flush=True)

    model = open_model(args.model)
    G, _ = load_generator(model.path)
    workdir = tempfile.TemporaryDirectory(prefix="thorax-bench-")
    args.workdir = workdir.name
    shipped = measure_model(
        f"{model.ref} (shipped)", model.file("onnx"), G, args, peaks, args.images, not args.no_int8
    )
    summary = [(model.ref, shipped)]
    if not args.no_paper:
        path, P = paper_network(256, Path(args.workdir))
        paper_args = argparse.Namespace(**{**vars(args), "batch": 8})
        title = "paper256 (full size, random weights: its agreement says little about a trained one)"
        summary.append(
            ("paper256", measure_model(title, path, P, paper_args, peaks, args.paper_images, False))
        )

    print()
    for ref, rows in summary:
        base = next(r for r in rows if r["name"] == "onnxruntime")
        for threads in args.threads:
            kept = [r for r in rows if r["within"] >= KEEP and r["name"] != "pytorch eager"]
            best = max(kept, key=lambda r: r[f"speed{threads}"])
            ratio = best[f"speed{threads}"] / base[f"speed{threads}"]
            print(
                f"{ref}, {threads} thread(s): the fastest variant within 1 grey level on >= {KEEP:.0%} of "
                f"pixels: {best['name']} ({best['precision']}), {ratio:.2f}x onnxruntime fp32"
            )
    print(f"\n({time.perf_counter() - t0:.0f} s in all)")
    if args.torchserve:
        torchserve_rates(model, [1, 8, args.batch], args.threads[-1], args.seconds)


if __name__ == "__main__":
    main()
