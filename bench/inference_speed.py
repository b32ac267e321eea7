"""Generator images/s through onnxruntime, PyTorch eager and TorchServe's HTTP path, for the same
model and the same batch sizes, measured in one run and printed as ratios to PyTorch eager.

    python bench/inference_speed.py [--model cxr64] [--batches 1 8 32] [--seconds 5] [--no-torchserve]

TorchServe is started on loopback with the model's .mar (Java 17 and `pip install -e .[torchserve]`).
Its figure includes JSON parsing, latent generation from (seed, index) and the HTTP round trip.
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
from tests.servers import torchserve  # noqa: E402
from thorax.latents import latents_for  # noqa: E402
from thorax.store import open_model  # noqa: E402
from training.checkpoint import load_generator  # noqa: E402


def rate(fn, batch: int, seconds: float) -> float:
    fn()  # warm-up
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        done += batch
    return done / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="NAME[/VERSION] (default: the store's default)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--no-torchserve", action="store_true")
    args = parser.parse_args()
    model = open_model(args.model)
    G, config = load_generator(model.path)
    session = ort.InferenceSession(str(model.file("onnx")), providers=["CPUExecutionProvider"])
    n_labels = len(config["label_names"])
    threads = torch.get_num_threads()
    print(
        f"{model.ref}: {config['resolution']} px; torch {torch.__version__}, {threads} threads; "
        f"onnxruntime {ort.__version__}"
    )
    results: dict[int, dict[str, float]] = {}
    for batch in args.batches:
        z = latents_for(0, range(batch), G.latent_dim)
        labels = np.zeros((batch, n_labels), np.float32)
        zt, lt = torch.from_numpy(z), torch.from_numpy(labels)

        def eager(zt=zt, lt=lt) -> None:
            with torch.no_grad():
                G(zt, lt)

        results[batch] = {
            "pytorch": rate(eager, batch, args.seconds),
            "onnxruntime": rate(
                lambda z=z, labels=labels: session.run(None, {"z": z, "labels": labels}), batch, args.seconds
            ),
        }
    if not args.no_torchserve:
        with (
            tempfile.TemporaryDirectory() as tmp,
            torchserve(model.file("mar"), Path(tmp), threads=threads) as url,
        ):
            for batch in args.batches:
                body = json.dumps(
                    {"seed": 0, "indices": list(range(batch)), "labels": [0.0] * n_labels}
                ).encode()

                def http(body=body) -> None:
                    headers = {"Content-Type": "application/json"}
                    request = urllib.request.Request(
                        f"{url}/predictions/{model.name}", data=body, headers=headers
                    )
                    with urllib.request.urlopen(request, timeout=120) as resp:
                        resp.read()

                results[batch]["torchserve"] = rate(http, batch, args.seconds)
    for batch, r in results.items():
        cells = "  ".join(f"{k} {v:7.1f} img/s ({v / r['pytorch']:.2f}x)" for k, v in r.items())
        print(f"batch {batch:3d}  {cells}")


if __name__ == "__main__":
    main()
