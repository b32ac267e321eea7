"""Label tables: a real dataset's (our `labels.csv` layout, or NIH's `Data_Entry_2017` layout) read for
its label counts, and the output table written in the same layout with the synthetic rows added."""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from thoraxclient.errors import DatasetError
from thoraxclient.labels import label_key

NIH_FINDINGS, NIH_IMAGE, NIH_PATIENT = "Finding Labels", "Image Index", "Patient ID"
NO_FINDING = "no_finding"
EXTRA_COLUMNS = ("synthetic", "model")


@dataclass
class LabelTable:
    """A label table: `layout` is "thorax" (one 0/1 column per label) or "nih" (`Finding Labels`
    joined by `|`); `label_columns` maps the known label names to their columns (thorax layout)."""

    layout: str
    columns: list[str]
    rows: list[dict[str, str]]
    label_columns: dict[str, str]

    def positives(self, row: Mapping[str, str], label_names: Sequence[str]) -> list[str]:
        """The labels an image is positive for, among `label_names`."""
        if self.layout == "nih":
            found = {label_key(f) for f in row.get(NIH_FINDINGS, "").split("|") if f.strip()}
            return [n for n in label_names if label_key(n) in found]
        return [n for n, col in self.label_columns.items() if n in label_names and _positive(row.get(col))]

    @cached_property
    def binary_columns(self) -> frozenset[str]:
        """The columns whose every value is 0 or 1 (computed once: a synthetic row per image asks)."""
        return frozenset(c for c in self.columns if _binary_column(self, c))

    def counts(self, label_names: Sequence[str]) -> dict[str, int]:
        """Images positive per label; an image positive for several labels counts once for each."""
        out = dict.fromkeys(label_names, 0)
        for row in self.rows:
            for name in self.positives(row, label_names):
                out[name] += 1
        return out


def _positive(value: str | None) -> bool:
    try:
        return float(value or 0) >= 0.5
    except ValueError:
        return False


def read_table(path: Path, label_names: Sequence[str]) -> LabelTable:
    """A base table (`.csv` or `.csv.gz`) in either layout; DatasetError if it is neither."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"base: no file {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            columns = list(reader.fieldnames or [])
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"base: cannot read {path}: {exc}") from None
    clash = [c for c in EXTRA_COLUMNS if c in columns]
    if NIH_FINDINGS in columns and NIH_IMAGE in columns:
        layout, label_columns = "nih", {}
    elif "filename" in columns:
        by_key = {label_key(c): c for c in columns}
        label_columns = {n: by_key[label_key(n)] for n in label_names if label_key(n) in by_key}
        layout = "thorax"
    else:
        raise DatasetError(
            f"base: {path.name} is neither a thorax labels.csv (a `filename` column and one 0/1 column per "
            f"label) nor an NIH Data_Entry table (`{NIH_IMAGE}`, `{NIH_FINDINGS}`)"
        )
    if clash:
        raise DatasetError(f"base: {path.name} already has the column(s) {clash}: is it an output table?")
    return LabelTable(layout, columns, rows, label_columns)


def empty_table(label_names: Sequence[str]) -> LabelTable:
    """The thorax layout with the given labels, for a dataset without a base."""
    columns = ["filename", "patient_id", "source", "view", *label_names, "No_Finding", "native_size"]
    return LabelTable("thorax", columns, [], {n: n for n in label_names})


def synthetic_row(
    table: LabelTable, filename: str, positives: Sequence[str], model: str, resolution: int
) -> dict[str, str]:
    """One synthetic image as a row of the table's layout (columns it cannot fill stay empty, 0/1 columns
    it does not know are 0)."""
    if table.layout == "nih":
        row = dict.fromkeys(table.columns, "")
        row.update({NIH_IMAGE: filename, NIH_FINDINGS: "|".join(positives) or "No Finding",
                    NIH_PATIENT: "synthetic"})  # fmt: skip
    else:
        row = {c: "0" if c in table.binary_columns else "" for c in table.columns}
        for name, col in table.label_columns.items():
            row[col] = "1" if name in positives else "0"
        for col in table.columns:
            if label_key(col) == NO_FINDING:
                row[col] = "0" if positives else "1"
        row.update({"filename": filename, "patient_id": "synthetic", "source": f"thorax:{model}"})
        if "native_size" in row:
            row["native_size"] = f"{resolution}x{resolution}"
    row.update({"synthetic": "1", "model": model})
    return row


def _binary_column(table: LabelTable, column: str) -> bool:
    values = {row.get(column, "") for row in table.rows}
    return bool(values) and values <= {"0", "1"}


def write_table(path: Path, table: LabelTable, synthetic: Sequence[dict[str, str]]) -> None:
    """The base rows (synthetic = 0) then the synthetic rows, in the base's columns plus `synthetic` and
    `model`; written whole or not at all."""
    columns = [*table.columns, *EXTRA_COLUMNS]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in table.rows:
        writer.writerow({**row, "synthetic": "0", "model": ""})
    writer.writerows(synthetic)
    temp = path.with_name(f".partial-{path.name}")
    temp.write_text(buffer.getvalue(), encoding="utf-8")
    temp.replace(path)
