"""`build_dataset`: a dataset topped up to per-label targets with synthetic radiographs from one or
several sites' generators, and `SyntheticDataset`, a map-style reader of what it wrote.

Output folder:

    labels.csv          the base rows (if any) and the synthetic rows, in the base's layout, plus
                        `synthetic` (0/1) and `model` (NAME/VERSION) columns
    images/<model>/<job id>/<key>.png    the synthetic images (`.dcm` with format="dicom")
    shards/<model>/<job id>/shard-NNNNNN.tar   the shards as downloaded (WebDataset; checked on re-runs)
    dataset_card.json   jobs, models and their card hashes, seeds, counts per label before and after, time
    .build-state.json   the request and its jobs, so that the same call resumes

Re-running the same call resumes: jobs already submitted are not submitted again, and shards already on
disk with the manifest's SHA-256 are not fetched again.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from thoraxclient import __version__
from thoraxclient import rebalance as rebalancing
from thoraxclient.client import Client
from thoraxclient.errors import DatasetError, NotFoundError
from thoraxclient.labels import label_key
from thoraxclient.schemas import ModelSummary
from thoraxclient.shards import decode_png, iter_shard, sha256_file
from thoraxclient.tables import LabelTable, empty_table, read_table, synthetic_row, write_table

STATE, CARD, TABLE = ".build-state.json", "dataset_card.json", "labels.csv"
MAX_IMAGES_PER_JOB = 20_000  # one label set per image travels in the request: keep it well under 4 MiB
SEED_LIMIT = 2**63


class _Card(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetModel(_Card):
    name: str
    version: str
    card_sha256: str = Field(description="SHA-256 of the model card the gateway served")
    weight: float
    labels: list[str]


class DatasetJob(_Card):
    id: str
    model: str = Field(description="NAME/VERSION")
    seed: int
    count: int
    requested: dict[str, int] = Field(description="images asked for per rebalanced label")
    shards: dict[str, str] = Field(default_factory=dict, description="shard name -> SHA-256")


class DatasetCard(_Card):
    """`dataset_card.json`: how the dataset was made and what it holds."""

    created: datetime
    thoraxclient: str = __version__
    gateway: str
    seed: int
    comorbidity: str
    format: str
    resolution: int | None
    rebalance: dict[str, int] | str
    targets: dict[str, int]
    base: dict[str, Any] | None = Field(description="path, layout, rows and SHA-256 of the base table")
    layout: str
    label_names: list[str]
    label_columns: dict[str, str]
    models: list[DatasetModel]
    jobs: list[DatasetJob]
    counts_before: dict[str, int]
    counts_after: dict[str, int]
    real_images: int
    synthetic_images: int


def build_dataset(
    out_dir: str | os.PathLike,
    rebalance: Mapping[str, int] | str,
    base: str | os.PathLike | None = None,
    models: Sequence[str] | Mapping[str, float] | None = None,
    resolution: int | None = None,
    format: str = "png",
    seed: int | None = None,
    comorbidity: str = "prior",
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    client: Client | None = None,
    shard_size: int = 1000,
    progress: bool = True,
    timeout: float | None = None,
) -> DatasetCard:
    """Top a dataset up to per-label counts with synthetic images, or make one from nothing.

    `rebalance` maps label names (any case) to the images positive for that label the dataset must
    hold, or is "uniform" (every label raised to the base's most frequent one). `base` is a real label
    table (thorax `labels.csv` or NIH `Data_Entry_2017` layout): only the deficit is generated.
    `models` names the generators to pool (a list, or names mapped to weights; the gateway's default
    model if None). `comorbidity="prior"` gives each synthetic image the other labels of a training-set
    pattern that contains the requested label (see `thoraxclient.rebalance` for the exact rule);
    "none" sets only the requested label. Errors in the request raise DatasetError before any job
    starts; the same call again resumes. Returns the dataset card (also written to the folder).
    """
    out = Path(out_dir)
    if format not in ("png", "dicom"):
        raise DatasetError(f"format: 'png' or 'dicom', not {format!r}")
    if comorbidity not in ("prior", "none"):
        raise DatasetError(f"comorbidity: 'prior' or 'none', not {comorbidity!r}")
    if seed is not None and not 0 <= seed < SEED_LIMIT:
        raise DatasetError(f"seed: 0 <= seed < 2**63, got {seed}")
    own_client = client is None
    client = client or Client(base_url, api_key)
    try:
        return _build(client, out, rebalance, base, models, resolution, format, seed, comorbidity,
                      shard_size, progress, timeout)  # fmt: skip
    finally:
        if own_client:
            client.close()


def _build(client, out, rebalance_arg, base, models, resolution, format, seed, comorbidity, shard_size,
           progress, timeout) -> DatasetCard:  # fmt: skip
    served = client.models()
    weights = _weights(models, served)
    cards = {name: client.model_card(name) for name in weights}
    refs = {name: f"{card.name}/{card.version}" for name, card in cards.items()}
    model_labels = {refs[n]: card.labels.names for n, card in cards.items()}
    label_names = rebalancing.union_labels(model_labels)
    table = read_table(Path(base), label_names) if base is not None else empty_table(label_names)
    before = table.counts(label_names)
    targets = rebalancing.resolve_targets(rebalance_arg, label_names, before)

    request = {
        "rebalance": rebalance_arg if isinstance(rebalance_arg, str) else targets,
        "base": _file_digest(Path(base)) if base is not None else None,
        "models": {refs[n]: w for n, w in weights.items()},
        "resolution": resolution, "format": format, "comorbidity": comorbidity, "shard_size": shard_size,
    }  # fmt: skip
    state = _load_state(out, request, seed)
    seed = state["seed"]
    plan = rebalancing.plan(
        targets, before, model_labels,
        weights={refs[n]: w for n, w in weights.items()},
        patterns={refs[n]: card.label_prior.patterns for n, card in cards.items()},
        comorbidity=comorbidity, seed=seed,
    )  # fmt: skip

    out.mkdir(parents=True, exist_ok=True)
    jobs: list[DatasetJob] = []
    synthetic: list[tuple[dict[str, str], list[str]]] = []  # (table row, positive labels)
    for number, (model, rows) in enumerate(plan.rows.items()):
        for part, start in enumerate(range(0, len(rows), MAX_IMAGES_PER_JOB)):
            chunk = rows[start : start + MAX_IMAGES_PER_JOB]
            job_seed = int(np.random.default_rng([seed, number, part]).integers(SEED_LIMIT))
            requested = Counter(label for row in chunk for label in row if label in targets)
            job = _run_job(client, out, state, f"{model}#{part}", model, chunk, job_seed, dict(requested),
                           resolution, format, shard_size, progress, timeout)  # fmt: skip
            jobs.append(job)
            synthetic += _extract(out, table, label_names, job, model)
    after = rebalancing.add_counts(before, [positives for _, positives in synthetic])
    write_table(out / TABLE, table, [row for row, _ in synthetic])
    card = DatasetCard(
        created=datetime.now(UTC), gateway=client.base_url, seed=seed, comorbidity=comorbidity,
        format=format, resolution=resolution, rebalance=request["rebalance"], targets=targets,
        base=request["base"] and {**request["base"], "layout": table.layout, "rows": len(table.rows)},
        layout=table.layout, label_names=label_names, label_columns=table.label_columns,
        models=[DatasetModel(name=cards[n].name, version=cards[n].version, weight=w,
                             card_sha256=_card_sha(served, refs[n]), labels=cards[n].labels.names)
                for n, w in weights.items()],
        jobs=jobs, counts_before=before, counts_after={n: after.get(n, 0) for n in label_names},
        real_images=len(table.rows), synthetic_images=len(synthetic),
    )  # fmt: skip
    _write_json(out / CARD, card.model_dump(mode="json"))
    return card


def _weights(
    models: Sequence[str] | Mapping[str, float] | None, served: list[ModelSummary]
) -> dict[str, float]:
    if models is None:
        default = [m.ref for m in served if m.default]
        if not default:
            raise DatasetError("models: the gateway has no default model; name one")
        return {default[0]: 1.0}
    if isinstance(models, str):
        models = [models]
    weights = dict(models) if isinstance(models, Mapping) else dict.fromkeys(models, 1.0)
    if not weights:
        raise DatasetError("models: name at least one model")
    for name, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight >= 0:
            raise DatasetError(f"models: the weight of {name!r} must be a number >= 0, got {weight!r}")
    known = {m.ref for m in served} | {m.name for m in served}
    unknown = [n for n in weights if n not in known]
    if unknown:
        raise DatasetError(f"models: the gateway has no model {', '.join(map(repr, unknown))}")
    return weights


def _card_sha(served: list[ModelSummary], ref: str) -> str:
    return next(m.card_sha256 for m in served if m.ref == ref)


def _file_digest(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise DatasetError(f"base: no file {path}")
    return {"path": str(path.resolve()), "sha256": sha256_file(path)}


def _load_state(out: Path, request: dict, seed: int | None) -> dict:
    """The build state of an earlier run of the same request (resume), or a new one."""
    path = out / STATE
    if path.is_file():
        state = json.loads(path.read_text())
        if state["request"] == json.loads(json.dumps(request)) and seed in (None, state["seed"]):
            return state
        raise DatasetError(
            f"{out} holds a dataset built with other arguments; use another folder (or delete it)"
        )
    if out.exists() and any(out.iterdir()):
        raise DatasetError(f"{out} exists and is not a dataset folder; name an empty or new folder")
    chosen = seed if seed is not None else int(np.random.default_rng().integers(SEED_LIMIT))
    return {"request": json.loads(json.dumps(request)), "seed": chosen, "jobs": {}}


def _write_json(path: Path, value: object) -> None:
    temp = path.with_name(f".partial-{path.name}")
    temp.write_text(json.dumps(value, indent=1, sort_keys=True) + "\n")
    temp.replace(path)


def _run_job(client: Client, out: Path, state: dict, key: str, model: str, rows: list[tuple[str, ...]],
             job_seed: int, requested: dict[str, int], resolution, format, shard_size, progress,
             timeout) -> DatasetJob:  # fmt: skip
    """Submit (or find again) the model's job, wait for it, and fetch the shards not yet on disk."""
    status = None
    job_id = state["jobs"].get(key)
    if job_id is not None:
        try:
            status = client.job(job_id)
        except NotFoundError:
            status = None  # the gateway forgot it: the same seed makes the same images again
        if status is not None and status.state == "failed":
            status = client.resume(status)
        elif status is not None and status.state == "cancelled":
            status = None
    if status is None:
        labels = [dict.fromkeys(row, 1.0) for row in rows]
        status = client.generate(len(rows), labels, model=model, resolution=resolution, seed=job_seed,
                                 format=format, shard_size=shard_size, prefix="datasets")  # fmt: skip
        state["jobs"][key] = status.id
        (out).mkdir(parents=True, exist_ok=True)
        _write_json(out / STATE, state)
    status = client.wait(status, progress=progress, timeout=timeout)  # JobError if it failed
    manifest = client.manifest(status)
    folder = out / "shards" / _safe(model) / status.id
    for entry in manifest.shards:
        path = folder / entry.name
        if path.is_file() and sha256_file(path) == entry.sha256:
            continue  # fetched by an earlier run
        client.download_shard(entry, path)
    return DatasetJob(id=status.id, model=model, seed=job_seed, count=len(rows), requested=requested,
                      shards={e.name: e.sha256 for e in manifest.shards})  # fmt: skip


def _extract(
    out: Path, table: LabelTable, label_names: list[str], job: DatasetJob, model: str
) -> list[tuple[dict[str, str], list[str]]]:
    """The job's images written into `images/` (unless already there), with their table rows and their
    positive labels (as the shards record them, named as in `label_names`)."""
    shard_folder = out / "shards" / _safe(model) / job.id
    image_folder = out / "images" / _safe(model) / job.id
    image_folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in sorted(job.shards):
        for sample in iter_shard(shard_folder / name, decode=False):
            path = image_folder / f"{sample.key}.{sample.extension}"
            if not path.is_file() or path.stat().st_size != len(sample.data):
                path.write_bytes(sample.data)
            positive_keys = {label_key(n) for n, v in sample.labels.items() if v >= 0.5}
            positives = [n for n in label_names if label_key(n) in positive_keys]
            resolution = int(sample.metadata.get("resolution", 0))
            row = synthetic_row(table, path.relative_to(out).as_posix(), positives, model, resolution)
            rows.append((row, positives))
    return rows


def _safe(model: str) -> str:
    return model.replace("/", "-")


def decode_dicom(data: bytes) -> np.ndarray:
    """The pixels of an 8-bit greyscale DICOM file (as the gateway writes) -> uint8 [H, W]. Needs pydicom
    (`pip install pydicom`), which the SDK does not require for PNG datasets."""
    try:
        import pydicom
    except ImportError:
        raise DatasetError("reading DICOM images needs pydicom: pip install pydicom") from None
    dataset = pydicom.dcmread(io.BytesIO(data))
    if dataset.get("BitsAllocated") != 8 or dataset.get("SamplesPerPixel") != 1:
        raise DatasetError("only 8-bit greyscale DICOM images are read (as the gateway writes them)")
    return np.asarray(dataset.pixel_array, dtype=np.uint8)


class SyntheticDataset:
    """The synthetic images of a `build_dataset` folder as a map-style dataset: item i is
    (image uint8 [H, W], labels float32 [L]) in `label_names` order. Works with a PyTorch DataLoader
    (it is indexable and sized) without importing torch. PNG images are read by the SDK itself, DICOM
    ones through pydicom. `include_real=True` with `real_root` (the folder the base table's filenames are
    relative to) adds the real rows, read as PNGs too."""

    def __init__(self, out_dir: str | os.PathLike, include_real: bool = False,
                 real_root: str | os.PathLike | None = None) -> None:  # fmt: skip
        import csv

        self.root = Path(out_dir)
        card = DatasetCard.model_validate_json((self.root / CARD).read_text())
        self.label_names = card.label_names
        self.layout, self.label_columns = card.layout, card.label_columns
        self.real_root = Path(real_root) if real_root is not None else None
        if include_real and self.real_root is None:
            raise DatasetError("include_real needs real_root, the folder of the base table's images")
        with open(self.root / TABLE, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        self.rows = [r for r in rows if r["synthetic"] == "1" or include_real]
        table = LabelTable(self.layout, [], [], self.label_columns)
        self._labels = np.asarray(
            [[1.0 if n in table.positives(r, self.label_names) else 0.0 for n in self.label_names]
             for r in self.rows], np.float32,
        ).reshape(len(self.rows), len(self.label_names))  # fmt: skip

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        row = self.rows[index]
        name = row.get("filename") or row.get("Image Index", "")
        folder = self.root if row["synthetic"] == "1" else self.real_root
        path = folder / name
        if path.suffix == ".dcm":
            return decode_dicom(path.read_bytes()), self._labels[index].copy()
        if path.suffix != ".png":
            raise DatasetError(f"{path.name}: only PNG and DICOM images are read")
        return decode_png(path.read_bytes()), self._labels[index].copy()

    def label_key(self, name: str) -> int:
        """The position of a label (any spelling) in the label vectors."""
        keys = [label_key(n) for n in self.label_names]
        return keys.index(label_key(name))
