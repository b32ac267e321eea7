"""What a job would cost before it is submitted (`POST /v1/jobs?dry_run=true`): images, bytes and time.

Bytes and rate come from a trial batch of the job's first images, generated and encoded here exactly as
the job would make them (the same model, resolution, format and label plan). The trial runs inference
and encoding one after the other, while a job overlaps them, so the time is an upper bound on this
gateway's current load. Trials are kept a few minutes per (model, resolution, format).
"""

from __future__ import annotations

import threading
import time

from thoraxclient.schemas import JobEstimate, JobSpec

from service import labels as label_rules
from service.catalog import LoadedModel
from service.imaging import downsample
from service.pipeline import SampleEncoder
from service.shards import BLOCK, tar_end

TRIAL_IMAGES = 8  # enough to average the PNG sizes; at most a batch
KEEP_S = 300.0  # a trial is reused this long


class Estimator:
    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self._trials: dict[tuple[str, int, str], tuple[float, float, float, int]] = {}
        self._lock = threading.Lock()

    def estimate(self, spec: JobSpec, model: LoadedModel) -> JobEstimate:
        rate, sample_bytes, trial = self._trial(spec, model)
        # each shard: its samples' tar members, then the end-of-archive blocks
        total = round(spec.count * sample_bytes) + spec.shards_total * len(tar_end())
        return JobEstimate(
            model=f"{spec.model_name}/{spec.model_version}",
            count=spec.count,
            resolution=spec.resolution,
            format=spec.format,
            shard_size=spec.shard_size,
            shards_total=spec.shards_total,
            bytes=total,
            bytes_per_image=sample_bytes,
            images_per_second=rate,
            seconds=spec.count / rate,
            measured_with=(
                f"a trial of {trial} images ({spec.resolution} px, {spec.format}) generated and encoded "
                "one after the other on this gateway"
            ),
        )

    def _trial(self, spec: JobSpec, model: LoadedModel) -> tuple[float, float, int]:
        """(images per second, bytes per sample in the tar, images tried) for the job's model and format."""
        key = (model.ref, spec.resolution, spec.format)
        with self._lock:
            kept = self._trials.get(key)
            if kept is not None and time.monotonic() - kept[0] < KEEP_S:
                return kept[1], kept[2], kept[3]
        n = max(1, min(TRIAL_IMAGES, self.batch_size, spec.count))
        indices = list(range(n))
        labels = label_rules.LabelPlan.of(spec, model.prior_patterns)(indices)  # [n, L]
        encoder = SampleEncoder(spec)
        model.backend.generate(spec.seed, indices[:1], labels[:1])  # warm: the first call of a session
        t0 = time.perf_counter()
        images = downsample(model.backend.generate(spec.seed, indices, labels), spec.resolution)
        sizes = [len(encoder(i, image, row)) for i, image, row in zip(indices, images, labels, strict=True)]
        elapsed = max(time.perf_counter() - t0, 1e-6)
        rate, sample_bytes = n / elapsed, sum(sizes) / n
        assert all(size % BLOCK == 0 for size in sizes)  # whole tar members
        with self._lock:
            self._trials[key] = (time.monotonic(), rate, sample_bytes, n)
        return rate, sample_bytes, n
