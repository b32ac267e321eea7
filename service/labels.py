"""From the `labels` a request names to one label vector per image, in the model's label order.

A request gives one vector for all images (values in the model's order, or label names mapped to values),
one vector per image, or a prior: some labels fixed, the others drawn per image from the model card's
training-set label patterns. Like latents, prior draws are keyed by (seed, image index), so image `i`
gets the same labels however the job is cut into batches.
"""

from __future__ import annotations

import math

import numpy as np
from thoraxclient.schemas import LabelPrior

from service.problems import FieldProblem
from thorax.labels import canonical_label

_PRIOR_STREAM = 0x1ABE1  # keeps the prior's draws apart from the latents of the same (seed, index)


def _value(field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FieldProblem(field, "must be a number in 0..1")
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise FieldProblem(field, f"must be a finite number in 0..1, got {value}")
    return float(value)


def named(field: str, name: str, label_names: list[str]) -> str:
    """The model's spelling of a label name a request gave (any case, spaces for underscores)."""
    try:
        return canonical_label(name, label_names)
    except KeyError:
        raise FieldProblem(field, f"unknown label {name!r}; known: {', '.join(label_names)}") from None


def _named(field: str, mapping: dict, label_names: list[str]) -> dict[str, float]:
    out = {}
    for name, value in mapping.items():
        out[named(f"{field}.{name}", name, label_names)] = _value(f"{field}.{name}", value)
    return out


def vector(field: str, given: list | dict, label_names: list[str]) -> list[float]:
    """One label vector from a list in the model's order or a mapping of names (missing names are 0)."""
    if isinstance(given, dict):
        named = _named(field, given, label_names)
        return [named.get(name, 0.0) for name in label_names]
    if len(given) != len(label_names):
        raise FieldProblem(field, f"a label vector has {len(label_names)} values, got {len(given)}")
    return [_value(f"{field}.{i}", v) for i, v in enumerate(given)]


def resolve(given: object, label_names: list[str], count: int, field: str = "labels") -> dict:
    """The request's labels as JobSpec fields: `label_vector`, `label_rows` or `label_prior_fixed`."""
    if given is None:
        return {"label_vector": [0.0] * len(label_names)}
    if isinstance(given, LabelPrior):
        return {"label_prior_fixed": _named(f"{field}.fixed", given.fixed, label_names)}
    if isinstance(given, dict) or (
        isinstance(given, list) and all(not isinstance(v, list | dict) for v in given)
    ):
        return {"label_vector": vector(field, given, label_names)}
    if len(given) != count:
        raise FieldProblem(field, f"a list of label vectors needs one per image ({count}), got {len(given)}")
    return {"label_rows": [vector(f"{field}.{i}", row, label_names) for i, row in enumerate(given)]}


class LabelPlan:
    """Label vectors of any images of a job: float32 [n, L] for a list of image indices."""

    def __init__(
        self,
        label_names: list[str],
        seed: int,
        prior_patterns: list[dict],
        *,
        label_vector: list[float] | None = None,
        label_rows: list[list[float]] | None = None,
        label_prior_fixed: dict[str, float] | None = None,
    ) -> None:
        self.names, self.seed = list(label_names), seed
        self.vector = np.asarray(label_vector, np.float32) if label_vector is not None else None
        self.rows = np.asarray(label_rows, np.float32) if label_rows is not None else None
        if self.vector is None and self.rows is None:
            position = {name: i for i, name in enumerate(self.names)}
            self.patterns = [[position[n] for n in p["labels"] if n in position] for p in prior_patterns]
            counts = np.asarray([p["count"] for p in prior_patterns], np.float64)
            self.cumulative = np.cumsum(counts) / counts.sum() if len(counts) else np.ones(0)
            self.fixed_at = [(position[n], v) for n, v in (label_prior_fixed or {}).items()]

    @classmethod
    def of(cls, spec, prior_patterns: list[dict]) -> LabelPlan:
        """The plan of a JobSpec."""
        return cls(
            spec.label_names,
            spec.seed,
            prior_patterns,
            label_vector=spec.label_vector,
            label_rows=spec.label_rows,
            label_prior_fixed=spec.label_prior_fixed,
        )

    def __call__(self, indices: list[int] | range) -> np.ndarray:
        if self.vector is not None:
            return np.tile(self.vector, (len(indices), 1))
        if self.rows is not None:
            return self.rows[list(indices)]
        out = np.zeros((len(indices), len(self.names)), np.float32)
        for row, index in enumerate(indices):
            if len(self.patterns):
                draw = np.random.default_rng([self.seed, index, _PRIOR_STREAM]).random()
                pick = min(int(np.searchsorted(self.cumulative, draw, side="right")), len(self.patterns) - 1)
                out[row, self.patterns[pick]] = 1.0
            for position, value in self.fixed_at:
                out[row, position] = value
        return out


def positive_counts(labels: np.ndarray, label_names: list[str]) -> dict[str, int]:
    """Images per label with a value of at least 0.5."""
    return {name: int(n) for name, n in zip(label_names, (labels >= 0.5).sum(axis=0).tolist(), strict=True)}
