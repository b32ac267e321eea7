"""The pipeline's own ceiling: images/s committed to S3 (SeaweedFS on loopback) with a generator that
returns precomputed images, so that no inference is timed, against the fastest generator of this
machine at each resolution (issue 16's goal: the ceiling at least 3x that generator). Measured in one
run, PNG and DICOM, at 64, 256 and 1024 px, with 1 encoding thread and with the gateway's default
(service/pipeline.py's ENCODE_THREADS, one per core).

    python bench/pipeline_speed.py [--resolutions 64 256 1024] [--seconds 20] [--no-generators]

Each job runs shard by shard through service/work.py's make_shard, as the gateway does: the inference
stage (here a copy out of the precomputed images), the encoder (PNG or DICOM, tar members, JSON
records) and the upload to S3, overlapped. The precomputed images are real radiographs from the data
folder resized to each resolution (1024 px ones are upsampled from 256 px, so they compress somewhat
better than real 1024 px radiographs would).

The generators: at 64 px the shipped model, at 256 and 1024 px the paper's full-size network (random
weights), each with onnxruntime fp32 and with OpenVINO bf16 (the backend's split), the faster counted;
on 1 thread, as the gateway runs them by default.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image
from thoraxclient.schemas import JobSpec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.roofline import cpu_flags_shown, cpu_model, neighbours_note, rate  # noqa: E402
from service import pipeline  # noqa: E402
from service.catalog import LoadedModel  # noqa: E402
from service.imaging import DicomEncoder, dicom_bytes  # noqa: E402
from service.layout import JobPaths  # noqa: E402
from service.metrics import Metrics  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.storage.s3 import S3Storage  # noqa: E402
from service.work import make_shard  # noqa: E402
from tests.servers import seaweedfs  # noqa: E402
from thorax.cli import DEFAULT_DATA  # noqa: E402
from thorax.labels import NIH_LABELS  # noqa: E402
from thorax.store import StoredModel, open_model  # noqa: E402

GOAL = 3.0
SHARD_SIZE = {64: 1000, 256: 200, 1024: 20}


class Precomputed:
    """A backend that returns stored images: image i is pool[i % len(pool)]."""

    name, precision = "precomputed", "fp32"

    def __init__(self, pool: np.ndarray) -> None:
        self.pool = pool  # [K, r, r] uint8

    def generate(self, seed: int, indices: list[int], labels: np.ndarray) -> np.ndarray:
        return self.pool[np.asarray(indices) % len(self.pool)]

    def close(self) -> None:
        pass


def radiographs(resolution: int, count: int = 64) -> np.ndarray:
    files = (
        sorted((DEFAULT_DATA / "images").rglob("*.png"))[:count]
        or sorted(DEFAULT_DATA.rglob("*.png"))[:count]
    )
    return np.stack([
        np.asarray(Image.open(f).convert("L").resize((resolution, resolution), Image.Resampling.BICUBIC))
        for f in files
    ])  # fmt: skip


class PydicomWriter:
    """The encoder as it was before issue 16: pydicom builds and writes every element of every image."""

    def __init__(self, **job: str) -> None:
        self.job = job

    def __call__(self, image: np.ndarray, *, index: int, labels: dict[str, float]) -> bytes:
        return dicom_bytes(image, index=index, labels=labels, **self.job)


def ceiling(storage: S3Storage, resolution: int, image_format: str, seconds: float) -> tuple[float, int]:
    """(images/s committed, images) of shards made until `seconds` have passed (whole shards)."""
    card = {"labels": {"names": list(NIH_LABELS)}, "architecture": {"resolution": resolution},
            "label_prior": {"patterns": []}}  # fmt: skip
    stored = StoredModel("precomputed", "1", Path("."))
    model = LoadedModel(stored, card, "0" * 64, Precomputed(radiographs(resolution)))
    shard_size = SHARD_SIZE[resolution]
    spec = JobSpec(
        job_id=uuid.uuid4().hex, model_name="precomputed", model_version="1", model_card_sha256="0" * 64,
        resolution=resolution, native_resolution=resolution, count=10**7, seed=1, format=image_format,
        shard_size=shard_size, prefix="bench", label_names=list(NIH_LABELS), label_vector=[0.0] * 14,
        created=datetime.now(UTC), backend="precomputed", precision="fp32",
    )  # fmt: skip
    paths = JobPaths.of("", "bench", spec.job_id, storage.location)
    metrics, done, shard_index = Metrics(), 0, 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds or shard_index < 2:
        make_shard(
            storage, paths, spec, model, shard_index, batch_size=32, metrics=metrics, check=lambda: None
        )
        done, shard_index = done + shard_size, shard_index + 1
    return done / (time.perf_counter() - t0), done


def fastest_generator(resolution: int, folder: Path, seconds: float) -> tuple[float, str]:
    """(images/s, which) of the faster of onnxruntime fp32 and OpenVINO bf16 at `resolution`, 1 thread."""
    from service.backends.onnx import OnnxBackend
    from service.backends.openvino import OpenVinoBackend

    if resolution == 64:
        stored = open_model(None)
        path, latent_dim, n_labels = stored.file("onnx"), 512, len(stored.card()["labels"]["names"])
        what, batch = stored.ref, 32
    else:
        from bench.inference_speed import paper_network

        path, G = paper_network(resolution, folder)
        latent_dim, n_labels, what, batch = G.latent_dim, G.num_labels, f"paper{resolution}", 2
    labels = np.zeros((batch, n_labels), np.float32)
    best, which = 0.0, ""
    for name, backend in (
        ("onnxruntime fp32", lambda: OnnxBackend(path, latent_dim, 1)),
        ("openvino bf16", lambda: OpenVinoBackend(path, latent_dim, 1, "bf16", chunk=batch)),  # no padding
    ):
        made = backend()
        speed = rate(lambda made=made: made.generate(1, list(range(batch)), labels), batch, seconds)
        if speed > best:
            best, which = speed, f"{what}, {name}"
        del made
    return best, which


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--seconds", type=float, default=20.0, help="per ceiling measurement")
    parser.add_argument("--no-generators", action="store_true", help="leave out the generators' rates")
    args = parser.parse_args()
    print(f"# Pipeline ceiling\n\n{cpu_model()}; flags: {cpu_flags_shown()}\n{neighbours_note()}")
    default_threads = pipeline.ENCODE_THREADS
    rows = []
    with tempfile.TemporaryDirectory(prefix="thorax-bench-") as tmp, seaweedfs(Path(tmp) / "s3") as endpoint:
        settings = Settings(
            s3_endpoint=endpoint, s3_bucket="bench", s3_access_key="bench", s3_secret_key="benchbench"
        )
        storage = S3Storage(settings)
        storage.prepare()
        for resolution in args.resolutions:
            generator = (None, "not measured")
            if not args.no_generators:
                generator = fastest_generator(resolution, Path(tmp), 6.0)
            for image_format in ("png", "dicom"):
                speeds = {}
                if image_format == "dicom":  # as before: one thread, pydicom for every element
                    pipeline.ENCODE_THREADS, pipeline.DicomEncoder = 1, PydicomWriter
                    speeds["before"], _ = ceiling(storage, resolution, image_format, args.seconds)
                    pipeline.DicomEncoder = DicomEncoder
                for threads in sorted({1, default_threads}):
                    pipeline.ENCODE_THREADS = threads
                    speeds[threads], _ = ceiling(storage, resolution, image_format, args.seconds)
                pipeline.ENCODE_THREADS = default_threads
                rows.append((resolution, image_format, speeds, generator))
                print(f"{resolution} px {image_format}: {speeds} images/s; generator {generator}", flush=True)
    print(
        "\n| px | format | ceiling before (1 thread, pydicom) | 1 encoding thread | default "
        f"({default_threads} threads) | fastest generator | ceiling / generator | goal >= {GOAL:g}x |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for resolution, image_format, speeds, (gen, which) in rows:
        best = speeds[default_threads]
        ratio = f"{best / gen:.1f}x" if gen else "-"
        met = ("met" if best / gen >= GOAL else "not met") if gen else "-"
        gen_cell = f"{gen:.2f} ({which})" if gen else which
        before = speeds.get("before", speeds[1])
        print(
            f"| {resolution} | {image_format} | {before:.1f} | {speeds[1]:.1f} | {best:.1f} | {gen_cell} "
            f"| {ratio} | {met} |"
        )


if __name__ == "__main__":
    main()
