"""The Dask executor's overhead, measured in one run against real processes on loopback:

  1. images/s of one job with the local executor (the default): `thorax serve` making the shards in its
     own threads;
  2. images/s of the same job with THORAX_EXECUTOR=dask and 1 worker, then 2 workers (`dask worker
     --nthreads 1 --no-nanny` each), the gateway only submitting;
  3. the ratios Dask-1-worker / local (goal: at least 0.85, the engine's overhead at most 15 %) and
     2 workers / 1 worker.

Every run writes PNG shards to one SeaweedFS server, from `POST /generate` to the job's success; each
configuration first runs a one-shard job so that models are loaded before the clock starts.

    python bench/dask_speed.py [--model cxr64] [--store DIR] [--count 4000] [--shard-size 250]
                               [--batch 32] [--threads 1]

Needs `pip install -e .[service,test]`. With `--count 4000` at about 150 images/s it takes about 3 minutes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.http_jobs import timed_job  # noqa: E402
from tests.servers import dask_scheduler, dask_worker, gateway, seaweedfs  # noqa: E402
from thorax.store import open_model  # noqa: E402

POLL_S = 1.0  # status polls: each costs a Dask gateway a scheduler call and a few storage reads


def run_job(url: str, body: dict, timeout: float = 3600) -> float:
    """Seconds from POST /generate to the job's success (to within POLL_S)."""
    return timed_job(url, body, timeout, POLL_S)[0]


def measure(url: str, args: argparse.Namespace, seed: int) -> float:
    """images/s of one job, after a one-shard warm-up job."""
    run_job(url, {"model": args.model, "count": args.batch, "shard_size": args.batch, "seed": seed})
    body = {"model": args.model, "count": args.count, "shard_size": args.shard_size, "seed": seed + 1}
    return args.count / run_job(url, body)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="NAME[/VERSION] (default: the store's default)")
    parser.add_argument("--store", help="model store (default: THORAX_MODEL_STORE or model_store/)")
    parser.add_argument("--count", type=int, default=4000)
    parser.add_argument("--shard-size", type=int, default=250)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument(
        "--threads", type=int, default=1, help="THORAX_ONNX_THREADS of each gateway and worker"
    )
    args = parser.parse_args()
    if args.store:
        os.environ["THORAX_MODEL_STORE"] = str(Path(args.store).resolve())
    model = open_model(args.model)
    args.model = model.ref
    rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        root = Path(tmp)
        endpoint = stack.enter_context(seaweedfs(root / "weed"))
        env = {"THORAX_S3_ENDPOINT": endpoint, "THORAX_S3_BUCKET": "bench", "THORAX_S3_ACCESS_KEY": "any",
               "THORAX_S3_SECRET_KEY": "anything", "THORAX_BATCH_SIZE": str(args.batch),
               "THORAX_ONNX_THREADS": str(args.threads), "OMP_NUM_THREADS": str(args.threads)}  # fmt: skip
        if "THORAX_MODEL_STORE" in os.environ:
            env["THORAX_MODEL_STORE"] = os.environ["THORAX_MODEL_STORE"]
        with gateway(env, root / "local") as (url, _):
            rates["local"] = measure(url, args, 10)
        address = stack.enter_context(dask_scheduler(root / "scheduler"))
        dask_env = {**env, "THORAX_EXECUTOR": "dask", "THORAX_DASK_SCHEDULER": address}
        with gateway(dask_env, root / "dask-gateway") as (url, _):
            stack.enter_context(dask_worker(address, dask_env, root / "workers", "w1"))
            rates["dask, 1 worker"] = measure(url, args, 20)
            stack.enter_context(dask_worker(address, dask_env, root / "workers", "w2"))
            rates["dask, 2 workers"] = measure(url, args, 30)
    print(f"model {model.ref}, {args.count} images in shards of {args.shard_size}, batch {args.batch}, "
          f"{args.threads} inference thread(s) per process (THORAX_BACKEND as set, else auto), "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    for name, rate in rates.items():
        print(f"  {name:16s} {rate:7.1f} images/s")
    print(f"  dask 1 worker / local:  {rates['dask, 1 worker'] / rates['local']:.2f}  (goal: at least 0.85)")
    print(f"  dask 2 workers / 1:     {rates['dask, 2 workers'] / rates['dask, 1 worker']:.2f}")


if __name__ == "__main__":
    main()
