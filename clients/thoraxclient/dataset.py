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
from thoraxclient.client import Client, progress_bar
from thoraxclient.errors import DatasetError, NotFoundError
from thoraxclient.labels import label_key
from thoraxclient.resize import resize
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
            synthetic += _extract(out, table, label_names, job, model, progress)
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
    _fetch_shards(client, manifest.shards, out / "shards" / _safe(model) / status.id, status.id, progress)
    return DatasetJob(id=status.id, model=model, seed=job_seed, count=len(rows), requested=requested,
                      shards={e.name: e.sha256 for e in manifest.shards})  # fmt: skip


def _fetch_shards(client: Client, shards: list, folder: Path, job_id: str, progress: bool) -> None:
    """The job's shards into `folder`: those on disk whose SHA-256 matches the manifest's are kept (a
    re-run reads each once to check it), the others downloaded; a bar in bytes counts both."""
    bar = progress_bar(sum(e.bytes for e in shards), progress, f"shards {job_id[:8]}", unit="B",
                       unit_scale=True, unit_divisor=1024)  # fmt: skip
    kept = fetched = 0
    try:
        for entry in shards:
            path = folder / entry.name
            if path.is_file() and path.stat().st_size == entry.bytes and sha256_file(path) == entry.sha256:
                kept += 1
                if bar is not None:
                    bar.update(entry.bytes)
            else:
                client.download_shard(entry, path, on_bytes=bar.update if bar is not None else None)
                fetched += 1
            if bar is not None:
                bar.set_postfix_str(f"{kept + fetched}/{len(shards)} shards, {kept} checked on disk", False)
    finally:
        if bar is not None:
            bar.close()


def _extract(
    out: Path, table: LabelTable, label_names: list[str], job: DatasetJob, model: str, progress: bool
) -> list[tuple[dict[str, str], list[str]]]:
    """The job's images written into `images/` (unless already there), with their table rows and their
    positive labels (as the shards record them, named as in `label_names`)."""
    shard_folder = out / "shards" / _safe(model) / job.id
    image_folder = out / "images" / _safe(model) / job.id
    image_folder.mkdir(parents=True, exist_ok=True)
    keys = {label_key(n): n for n in label_names}
    rows = []
    bar = progress_bar(job.count, progress, f"images {job.id[:8]}")
    try:
        for name in sorted(job.shards):
            for sample in iter_shard(shard_folder / name, decode=False):
                path = image_folder / f"{sample.key}.{sample.extension}"
                if not path.is_file() or path.read_bytes() != sample.data:  # the shard's SHA-256 was checked
                    path.write_bytes(sample.data)
                positive_keys = {label_key(n) for n, v in sample.labels.items() if v >= 0.5}
                positives = [n for k, n in keys.items() if k in positive_keys]
                resolution = int(sample.metadata.get("resolution", 0))
                row = synthetic_row(table, path.relative_to(out).as_posix(), positives, model, resolution)
                rows.append((row, positives))
                if bar is not None:
                    bar.update()
    finally:
        if bar is not None:
            bar.close()
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
    """The images of a `build_dataset` folder as a map-style dataset that a PyTorch DataLoader batches.

    Item i is a tuple `(image, labels)`:

        image   numpy uint8 [R, R], greyscale; R = `resolution`
        labels  numpy float32 [L], 1.0 where the image is positive for `label_names[j]`, else 0.0
                (`label_names` is the dataset card's list: the 14 NIH labels for the shipped model)

    The items are the rows of the folder's `labels.csv`, in its order, but only its synthetic rows
    (`synthetic` = 1) unless `include_real=True`: with a base table, len() is the number of images
    generated (the deficit: a table of 2,246 real rows topped up to 10,000 Cardiomegaly images holds
    12,164 rows, of which 9,918 are synthetic), not the table's rows. `include_real=True` adds the base
    table's rows first, as in the table; `real_root` is where their files are: the data folder (the one
    holding `images/`, e.g. `../shared/data/cxr256`) or the images folder itself, by default the folder
    of the base table that `build_dataset` was given.

    Every image is resized to `resolution` x `resolution` pixels (area average when shrinking,
    bilinear when enlarging), by default the synthetic images' own resolution, so that real 256 px and
    synthetic 64 px images batch together. With the DataLoader's default collation a batch is
    (uint8 tensor [B, R, R], float32 tensor [B, L]). PNG images are read by the SDK itself, DICOM ones
    through pydicom; torch is never imported.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        include_real: bool = False,
        real_root: str | os.PathLike | None = None,
        resolution: int | None = None,
    ) -> None:
        import csv

        self.root = Path(out_dir)
        card_path = self.root / CARD
        if not card_path.is_file():
            raise DatasetError(f"{self.root} is not a build_dataset folder: it has no {CARD}")
        card = DatasetCard.model_validate_json(card_path.read_text())
        self.label_names = card.label_names
        self.layout, self.label_columns = card.layout, card.label_columns
        with open(self.root / TABLE, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        self.rows = [r for r in rows if r["synthetic"] == "1" or include_real]
        self.synthetic_images = sum(r["synthetic"] == "1" for r in self.rows)
        self.real_images = len(self.rows) - self.synthetic_images
        table = LabelTable(self.layout, [], [], self.label_columns)
        self._labels = np.asarray(
            [[1.0 if n in table.positives(r, self.label_names) else 0.0 for n in self.label_names]
             for r in self.rows], np.float32,
        ).reshape(len(self.rows), len(self.label_names))  # fmt: skip
        self._real_folders = self._find_real_folders(card, real_root) if self.real_images else []
        self.real_root = self._real_folders[0] if self._real_folders else None
        if resolution is not None and (isinstance(resolution, bool) or not 1 <= int(resolution) <= 4096):
            raise DatasetError(f"resolution: a number of pixels from 1 to 4096, got {resolution!r}")
        self.resolution = int(resolution) if resolution is not None else self._default_resolution(card)

    def _find_real_folders(self, card: DatasetCard, real_root: str | os.PathLike | None) -> list[Path]:
        """The folders a real row's file may be in, the one holding the first real row's file first."""
        if real_root is not None:
            root, given = Path(real_root), "real_root"
        elif card.base is not None:
            root, given = Path(card.base["path"]).parent, "the base table's folder"
        else:
            raise DatasetError("include_real: the dataset has real rows but no base table; pass real_root")
        # the data folder, its images/ (thorax layout), or NIH's images_*/images/ folders
        folders = [root, root / "images", *sorted(root.glob("images_*/images"))]
        name = self._filename(next(r for r in self.rows if r["synthetic"] != "1"))
        found = [f for f in folders if (f / name).is_file()]
        if not found:
            raise DatasetError(
                f"include_real: the real image {name} is neither in {given} {root} nor in its images/ "
                "folder; pass real_root=, the data folder that holds images/ (e.g. ../shared/data/cxr256) "
                "or the images folder itself"
            )
        return [found[0], *(f for f in folders if f != found[0])]

    def _default_resolution(self, card: DatasetCard) -> int:
        """The synthetic images' resolution (the first item's size if there are none)."""
        if card.resolution is not None and self.synthetic_images:
            return card.resolution
        first = next((i for i, r in enumerate(self.rows) if r["synthetic"] == "1"), 0)
        return self._read(first).shape[0] if self.rows else 0

    @staticmethod
    def _filename(row: dict[str, str]) -> str:
        return row.get("filename") or row.get("Image Index", "")

    def _path(self, row: dict[str, str]) -> Path:
        name = self._filename(row)
        if row["synthetic"] == "1":
            return self.root / name
        for folder in self._real_folders:
            if (folder / name).is_file():
                return folder / name
        raise DatasetError(f"{name}: no such real image in {', '.join(map(str, self._real_folders))}")

    def _read(self, index: int) -> np.ndarray:
        path = self._path(self.rows[index])
        if path.suffix == ".dcm":
            return decode_dicom(path.read_bytes())
        if path.suffix != ".png":
            raise DatasetError(f"{path.name}: only PNG and DICOM images are read")
        return decode_png(path.read_bytes())

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        return resize(self._read(index), self.resolution), self._labels[index].copy()

    def __repr__(self) -> str:
        counts = f"{self.synthetic_images} synthetic + {self.real_images} real images"
        shape = f"{self.resolution} px, {len(self.label_names)} labels"
        return f"SyntheticDataset({str(self.root)!r}): {counts} at {shape}"

    def label_key(self, name: str) -> int:
        """The position of a label (any spelling) in the label vectors."""
        keys = [label_key(n) for n in self.label_names]
        return keys.index(label_key(name))
