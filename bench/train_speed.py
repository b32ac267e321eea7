"""Training images/s per stage for the slim (cxr64), the adult (nih64: labels in every block,
projection critic, augmentation) and the paper's full-size networks, fp32 and bf16, measured in one
run through the real training step on real radiographs.

    python bench/train_speed.py [--configs cxr64 nih64 paper256] [--steps 6] [--data DIR]

Prints one line per (config, resolution, precision), the bf16/fp32 ratio per stage, and, when both
cxr64 and nih64 ran, nih64's cost per image relative to cxr64's at each resolution (issue 11 allows
1.20 at 64 px). nih64 is measured with its augmentation at full strength (p = the config's ceiling)
and the conditioning ramp finished, its most expensive step. Full-size stages above 32 px are slow
on a CPU; `--max-res` bounds them.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from thorax.cli import DEFAULT_DATA
from training.config import load_config
from training.schedule import Phase
from training.train import RunOptions, Trainer


def measure(cfg_name: str, resolution: int, bf16: bool, steps: int, data: Path, batch: int | None) -> float:
    cfg = load_config(cfg_name)
    if batch:
        stages = tuple(dataclasses.replace(s, batch=batch) for s in cfg.stages)
        cfg = dataclasses.replace(cfg, stages=stages)
    with tempfile.TemporaryDirectory() as tmp:
        opts = RunOptions(Path(tmp), data, device="cpu", bf16=bf16, limit_images=256, quiet=True)
        trainer = Trainer(cfg, opts)
        if cfg.ada_target or cfg.augment_p:  # the dearest step: every augmentation applies
            trainer.ada.p, trainer.ada.target = cfg.ada_p_max, None
        stage = cfg.stage(resolution)
        phase = Phase(resolution, "stable", 0, 10**9, stage.batch)
        trainer.train_step(phase)  # warm-up
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.train_step(phase)
        return steps * stage.batch / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["cxr64", "nih64", "paper256"])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--max-res", type=int, default=64)
    parser.add_argument("--batch", type=int, help="override every stage's batch (full-size nets on a CPU)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    speeds: dict[tuple[str, int], float] = {}
    for name in args.configs:
        cfg = load_config(name)
        for stage in cfg.stages:
            if stage.resolution > args.max_res:
                break
            fp32 = measure(name, stage.resolution, False, args.steps, args.data, args.batch)
            bf16 = measure(name, stage.resolution, True, args.steps, args.data, args.batch)
            speeds[name, stage.resolution] = bf16 if load_config(name).bf16 else fp32
            print(
                f"{name:9s} {stage.resolution:4d} px  batch {args.batch or stage.batch:4d}  "
                f"fp32 {fp32:8.1f} img/s  bf16 {bf16:8.1f} img/s  bf16/fp32 {bf16 / fp32:4.2f}",
                flush=True,
            )
    for (name, resolution), speed in speeds.items():
        if name == "nih64" and ("cxr64", resolution) in speeds:
            ratio = speeds["cxr64", resolution] / speed
            print(f"nih64 / cxr64 cost per image at {resolution} px (their configs' precision): {ratio:.2f}")


if __name__ == "__main__":
    main()
