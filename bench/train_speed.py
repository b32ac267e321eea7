"""Training images/s per stage for the slim (cxr64), the adult (nih64: labels in every block,
projection critic, augmentation) and the paper's full-size networks, fp32 and bf16, measured in one
run through the real training step on real radiographs.

    python bench/train_speed.py [--configs cxr64 nih64 paper256] [--steps 4] [--rounds 3] [--data DIR]

Configs that share a resolution are timed in turns, round by round, and the best round of each counts,
so that other work on the machine (a training run, tests) slows them alike. Prints one line per
(config, resolution, precision), the bf16/fp32 ratio per stage, and, when cxr64 ran, every other
config's cost per image relative to cxr64's at each resolution (issue 11 allows nih64 and its variants,
such as nih64-ca, 1.20 at 64 px). The nih64 family is measured with its augmentation at full strength
(p = the config's ceiling) and the conditioning ramp finished, its most expensive step. Full-size
stages above 32 px are slow on a CPU; `--max-res` bounds them.
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


def make_trainer(cfg_name: str, resolution: int, bf16: bool, data: Path, batch: int | None, tmp: str):
    """A trainer at `resolution`'s stable phase, warmed up by one step; returns (trainer, phase)."""
    cfg = load_config(cfg_name)
    if batch:
        stages = tuple(dataclasses.replace(s, batch=batch) for s in cfg.stages)
        cfg = dataclasses.replace(cfg, stages=stages)
    opts = RunOptions(Path(tmp), data, device="cpu", bf16=bf16, limit_images=256, quiet=True)
    trainer = Trainer(cfg, opts)
    if cfg.ada_target or cfg.augment_p:  # the dearest step: every augmentation applies
        trainer.ada.p, trainer.ada.target = cfg.ada_p_max, None
    trainer.images_shown = 10**9  # past the conditioning ramp: every conditional term at full gain
    stage = cfg.stage(resolution)
    phase = Phase(resolution, "stable", 0, 10**9, stage.batch)
    trainer.train_step(phase)  # warm-up
    return trainer, phase


def timed_round(trainer: Trainer, phase: Phase, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(phase)
    return steps * phase.batch / (time.perf_counter() - t0)


def measure_together(
    names: list[str], resolution: int, bf16: bool, steps: int, rounds: int, data: Path, batch: int | None
) -> dict[str, float]:
    """images/s of each config at one resolution and precision: the best of `rounds` rounds of `steps`
    steps, the configs taking turns round by round, so that other work on the machine slows them
    alike and the best round of each is the one least disturbed."""
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {
            name: make_trainer(name, resolution, bf16, data, batch, f"{tmp}/{name}") for name in names
        }
        best = dict.fromkeys(names, 0.0)
        for _ in range(rounds):
            for name, (trainer, phase) in trainers.items():
                best[name] = max(best[name], timed_round(trainer, phase, steps))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["cxr64", "nih64", "paper256"])
    parser.add_argument("--steps", type=int, default=4, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per config; the best counts")
    parser.add_argument("--max-res", type=int, default=64)
    parser.add_argument("--batch", type=int, help="override every stage's batch (full-size nets on a CPU)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; best of {args.rounds} rounds")
    resolutions: dict[int, list[str]] = {}
    for name in args.configs:
        for stage in load_config(name).stages:
            if stage.resolution <= args.max_res:
                resolutions.setdefault(stage.resolution, []).append(name)
    speeds: dict[tuple[str, int], float] = {}
    for resolution, names in sorted(resolutions.items()):
        fp32 = measure_together(names, resolution, False, args.steps, args.rounds, args.data, args.batch)
        bf16 = measure_together(names, resolution, True, args.steps, args.rounds, args.data, args.batch)
        for name in names:
            speeds[name, resolution] = bf16[name] if load_config(name).bf16 else fp32[name]
            batch = args.batch or load_config(name).stage(resolution).batch
            print(
                f"{name:9s} {resolution:4d} px  batch {batch:4d}  "
                f"fp32 {fp32[name]:8.1f} img/s  bf16 {bf16[name]:8.1f} img/s  "
                f"bf16/fp32 {bf16[name] / fp32[name]:4.2f}",
                flush=True,
            )
    for (name, resolution), speed in speeds.items():
        if name != "cxr64" and ("cxr64", resolution) in speeds:
            ratio = speeds["cxr64", resolution] / speed
            print(f"{name} / cxr64 cost per image at {resolution} px (their configs' precision): {ratio:.2f}")


if __name__ == "__main__":
    main()
