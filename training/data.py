"""Real radiographs and their labels: reading, the patient-disjoint split, and per-stage tensors.

Two label tables are understood:
- Thorax's `labels.csv` (the layout of `shared/data/cxr256`): `filename`, `patient_id`, and one 0/1
  (or 0..1) column per label name.
- NIH's `Data_Entry_2017*.csv[.gz]`: `Image Index`, `Finding Labels` joined by `|`, `Patient ID`.

Images are 8-bit grayscale PNGs; they are loaded once, resized to the config's resolution, and kept
in memory as uint8. Each stage's lower resolution is reached by area averaging. Nothing flips images
left to right: left and right anatomy differ.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from thorax.errors import UserError
from thorax.labels import canonical_label

SPLITS = ("train", "val", "test")


@dataclass
class LabelTable:
    filenames: list[str]  # image file names, relative to the image folder
    patient_ids: list[str]
    labels: np.ndarray  # float32 [N, num_labels], each in 0..1
    label_names: tuple[str, ...]


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def find_label_table(data_dir: Path) -> Path:
    """The label table of a data folder: `labels.csv`, else NIH's `Data_Entry_2017*.csv[.gz]`."""
    if (data_dir / "labels.csv").is_file():
        return data_dir / "labels.csv"
    nih = sorted(data_dir.glob("Data_Entry_2017*.csv*"))
    if nih:
        return nih[0]
    raise UserError(f"{data_dir}: no labels.csv or Data_Entry_2017*.csv in this folder")


def describe_data(data_dir: Path, label_names: tuple[str, ...]) -> dict:
    """A data folder as a shared artifact (evaluation.json) names it: by its name, its image count (the
    rows of its label table) and the label table's SHA-256, which anyone can check on their own copy;
    never by its path, which means something on one machine only."""
    table = find_label_table(data_dir)
    return {
        "name": data_dir.resolve().name,
        "images": len(read_label_table(table, label_names).filenames),
        "label_table": table.name,
        "label_table_sha256": hashlib.sha256(table.read_bytes()).hexdigest(),
    }


def read_label_table(path: Path, label_names: tuple[str, ...]) -> LabelTable:
    """Read either label-table layout into a LabelTable in the order of ``label_names``."""
    with _open_text(path) as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        rows = list(reader)
    if "Finding Labels" in columns:
        return _read_nih(rows, label_names, path)
    if "filename" in columns and "patient_id" in columns:
        return _read_thorax(rows, columns, label_names, path)
    raise UserError(
        f"{path}: unknown label table layout (need `filename`, `patient_id` and label columns, "
        "or NIH's `Image Index`, `Finding Labels`, `Patient ID`)"
    )


def _read_thorax(
    rows: list[dict], columns: list[str], label_names: tuple[str, ...], path: Path
) -> LabelTable:
    missing = [name for name in label_names if name not in columns]
    if missing:
        raise UserError(f"{path}: label column(s) missing: {', '.join(missing)}")
    labels = np.zeros((len(rows), len(label_names)), dtype=np.float32)
    for i, row in enumerate(rows):
        for j, name in enumerate(label_names):
            try:
                value = float(row[name] or 0)
            except ValueError:
                raise UserError(
                    f"{path}: row {i + 2}, column {name}: {row[name]!r} is not a number"
                ) from None
            if not 0.0 <= value <= 1.0:
                raise UserError(f"{path}: row {i + 2}, column {name}: {value} is outside 0..1")
            labels[i, j] = value
    return LabelTable([r["filename"] for r in rows], [r["patient_id"] for r in rows], labels, label_names)


def _read_nih(rows: list[dict], label_names: tuple[str, ...], path: Path) -> LabelTable:
    labels = np.zeros((len(rows), len(label_names)), dtype=np.float32)
    column = {name: j for j, name in enumerate(label_names)}
    for i, row in enumerate(rows):
        for finding in row["Finding Labels"].split("|"):
            finding = finding.strip()
            if not finding or finding.lower() == "no finding":
                continue
            try:
                labels[i, column[canonical_label(finding, label_names)]] = 1.0
            except KeyError:
                raise UserError(f"{path}: row {i + 2}: unknown finding {finding!r}") from None
    return LabelTable(
        [r["Image Index"] for r in rows], [f"nih_{r['Patient ID']}" for r in rows], labels, label_names
    )


def split_of_patient(patient_id: str, fractions: tuple[float, float, float], seed: int) -> str:
    """Which split a patient belongs to: a hash of (seed, patient id), so it never depends on order."""
    digest = hashlib.sha256(f"{seed}:{patient_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < fractions[0]:
        return "train"
    if u < fractions[0] + fractions[1]:
        return "val"
    return "test"


def patient_split(
    table: LabelTable, fractions: tuple[float, float, float], seed: int
) -> dict[str, list[str]]:
    """Patient-disjoint split: every image of a patient lands on the same side. Maps split -> filenames."""
    out: dict[str, list[str]] = {name: [] for name in SPLITS}
    for filename, patient in zip(table.filenames, table.patient_ids, strict=True):
        out[split_of_patient(patient, fractions, seed)].append(filename)
    return out


def _image_index(image_dir: Path) -> dict[str, Path]:
    """Map file name -> path; NIH's release spreads its PNGs over several `images_*/images` folders."""
    direct = image_dir / "images"
    root = direct if direct.is_dir() else image_dir
    return {p.name: p for p in root.rglob("*.png")}


def load_image(path: Path, resolution: int) -> np.ndarray:
    """A grayscale radiograph as uint8 [resolution, resolution]; non-square images are zero-padded."""
    with Image.open(path) as im:
        im = im.convert("L")
        if im.width != im.height:
            side = max(im.size)
            canvas = Image.new("L", (side, side), 0)
            canvas.paste(im, ((side - im.width) // 2, (side - im.height) // 2))
            im = canvas
        return np.asarray(resample(im, resolution), dtype=np.uint8)


def resample(im: Image.Image, resolution: int) -> Image.Image:
    """A square image at `resolution`: Lanczos when shrinking, bicubic when enlarging (unchanged at that
    side). Real radiographs are loaded with it, and generated ones are brought to a classifier's side with
    it (training/evaluate.py `as_loaded`), so that both meet a classifier through the same filter."""
    if im.width == resolution:
        return im
    return im.resize((resolution, resolution), Image.LANCZOS if im.width > resolution else Image.BICUBIC)


class RadiographSet:
    """The images of one split in memory, with their labels, served per stage resolution.

    Args:
        data_dir:    folder with a label table and the PNGs (directly, or under `images/`).
        resolution:  the training's final resolution; images are resized to it once, on load.
        label_names: label columns, in the model's order.
        split:       "train", "val", "test" or "all".
        fractions:   train / validation / test fractions of patients.
        seed:        seed of the split hash.
        limit:       keep only the first `limit` images of the split (tests).
        patient_prefixes: keep only patients whose id starts with one of these (a cohort, e.g.
                     ("nih_",) for NIH's adults); empty keeps everyone. The split is unchanged: a
                     patient keeps its side whatever the filter.
    """

    def __init__(
        self,
        data_dir: str | Path,
        resolution: int,
        label_names: tuple[str, ...],
        split: str = "train",
        fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
        seed: int = 0,
        limit: int | None = None,
        patient_prefixes: tuple[str, ...] = (),
    ) -> None:
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise UserError(f"data folder {data_dir} does not exist")
        self.label_table_path = find_label_table(data_dir)
        table = read_label_table(self.label_table_path, label_names)
        self.split_files = patient_split(table, fractions, seed)
        if patient_prefixes:  # the cohort's files only, so that split.json describes what was used
            cohort = {f for f, pid in zip(table.filenames, table.patient_ids, strict=True)
                      if pid.startswith(tuple(patient_prefixes))}  # fmt: skip
            self.split_files = {k: [f for f in v if f in cohort] for k, v in self.split_files.items()}
        keep = set(table.filenames) if split == "all" else set(self.split_files[split])
        index = _image_index(data_dir)
        rows = [i for i, f in enumerate(table.filenames) if f in keep and f in index]
        if patient_prefixes:
            rows = [i for i in rows if table.patient_ids[i].startswith(tuple(patient_prefixes))]
        if limit is not None:
            rows = rows[:limit]
        if not rows:
            raise UserError(
                f"{data_dir}: no images of the {split!r} split were found next to its label table"
                + (f" (patients {', '.join(patient_prefixes)}*)" if patient_prefixes else "")
            )
        self.label_names = label_names
        self.filenames = [table.filenames[i] for i in rows]
        self.patient_ids = [table.patient_ids[i] for i in rows]
        self.labels = torch.from_numpy(table.labels[rows])  # [N, L] float32
        pixels = np.stack([load_image(index[f], resolution) for f in self.filenames])
        self.pixels = torch.from_numpy(pixels).unsqueeze(1)  # [N, 1, R, R] uint8
        self.resolution = resolution
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.filenames)

    def images_at(self, resolution: int) -> torch.Tensor:
        """All images at ``resolution`` as float32 in [-1, 1]: [N, 1, resolution, resolution]."""
        if resolution not in self._cache:
            self._cache.clear()  # only the current stage's tensor is kept
            x = self.pixels.float() / 127.5 - 1.0
            if resolution != self.resolution:
                x = F.adaptive_avg_pool2d(x, resolution)
            self._cache[resolution] = x.contiguous()
        return self._cache[resolution]

    def label_prevalence(self) -> dict[str, float]:
        mean = self.labels.mean(0).tolist()
        return {name: round(v, 5) for name, v in zip(self.label_names, mean, strict=True)}

    def write_split(self, path: Path) -> None:
        """Save the split (every split's file names) so that evaluation uses the same held-out images."""
        path.write_text(json.dumps({"label_table": str(self.label_table_path), **self.split_files}, indent=1))
