"""The arithmetic of rebalancing, pure and deterministic: from the counts a dataset has and the counts it
must hold to the label set of every synthetic image to generate, and from which model.

The rule that makes the targets exact:

* A label's count is the number of images positive for it; an image positive for several labels counts
  once for each of them.
* Each requested label L gets `deficit = max(0, target - base count)` synthetic images, each positive
  for L. A target below the base count generates nothing (images are never removed).
* With `comorbidity="prior"` an image for L also carries the other labels of one training-set pattern
  of the model's card, drawn in proportion to the pattern's count among the patterns that contain L and
  **no other requested label**. So every synthetic image is positive for exactly one requested label:
  requested labels end at exactly max(target, base), and the labels that were not requested rise by
  the co-morbid draws (counted once per image). When no pattern qualifies, the image carries L alone.
* With several models a label is requested only from the models whose cards name it, its deficit split
  by their weights (largest remainder, ties to the earlier model).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from thoraxclient.errors import DatasetError
from thoraxclient.labels import canonical_label, label_key

Comorbidity = str  # "prior" or "none"


@dataclass(frozen=True)
class Plan:
    """What to generate: for each model, one label set per synthetic image, in order."""

    targets: dict[str, int]
    deficits: dict[str, int]
    rows: dict[str, list[tuple[str, ...]]] = field(default_factory=dict)  # model -> label sets
    requested: dict[str, dict[str, int]] = field(default_factory=dict)  # model -> label -> images

    def counts_after(self, base_counts: Mapping[str, int]) -> dict[str, int]:
        """Images per label once the synthetic images join the base."""
        return add_counts(base_counts, [row for rows in self.rows.values() for row in rows])


def add_counts(base_counts: Mapping[str, int], rows: Sequence[Sequence[str]]) -> dict[str, int]:
    """Base counts plus one per label of every row (each row is one image's positive labels)."""
    counts = Counter(dict(base_counts))
    for row in rows:
        counts.update(set(row))
    return dict(counts)


def union_labels(model_labels: Mapping[str, Sequence[str]]) -> list[str]:
    """Every model's labels, in the order they first appear; the same label under two spellings is one."""
    seen: dict[str, str] = {}
    for names in model_labels.values():
        for name in names:
            seen.setdefault(label_key(name), name)
    return list(seen.values())


def resolve_targets(
    rebalance: Mapping[str, int] | str, label_names: Sequence[str], base_counts: Mapping[str, int]
) -> dict[str, int]:
    """`rebalance` as canonical label -> target count; DatasetError for an unknown label or bad count."""
    if isinstance(rebalance, str):
        if rebalance != "uniform":
            raise DatasetError(f"rebalance: a mapping of labels to counts or 'uniform', not {rebalance!r}")
        top = max((base_counts.get(name, 0) for name in label_names), default=0)
        if top == 0:
            raise DatasetError("rebalance='uniform' needs a base dataset with at least one positive label")
        return {name: top for name in label_names}
    if not rebalance:
        raise DatasetError("rebalance: name at least one label and its target count")
    targets: dict[str, int] = {}
    for name, count in rebalance.items():
        try:
            label = canonical_label(str(name), label_names)
        except KeyError as exc:
            raise DatasetError(f"rebalance: {exc.args[0]}") from None
        if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 0:
            raise DatasetError(
                f"rebalance: the target of {name!r} must be a whole number >= 0, got {count!r}"
            )
        if label in targets:
            raise DatasetError(f"rebalance: {label!r} is named twice")
        targets[label] = int(count)
    return targets


def deficits(base_counts: Mapping[str, int], targets: Mapping[str, int]) -> dict[str, int]:
    """Synthetic images needed per requested label: never negative."""
    return {label: max(0, target - base_counts.get(label, 0)) for label, target in targets.items()}


def split_by_weight(count: int, weights: Mapping[str, float]) -> dict[str, int]:
    """`count` shared out in proportion to the weights (largest remainder; ties to the earlier name)."""
    names = list(weights)
    total = float(sum(weights.values()))
    if not names or total <= 0:
        raise DatasetError("the models that could generate a label all have weight 0")
    exact = [count * weights[n] / total for n in names]
    shares = [int(x) for x in exact]
    order = sorted(range(len(names)), key=lambda i: (-(exact[i] - shares[i]), i))
    for i in order[: count - sum(shares)]:
        shares[i] += 1
    return dict(zip(names, shares, strict=True))


def comorbid_patterns(
    label: str, requested: set[str], patterns: Sequence[Mapping], label_names: Sequence[str]
) -> tuple[list[tuple[str, ...]], np.ndarray]:
    """The card's patterns containing `label` and no other requested label, canonically named, with
    their training-set counts."""
    keys = {label_key(n): n for n in label_names}
    others = {label_key(r) for r in requested} - {label_key(label)}
    chosen, counts = [], []
    for pattern in patterns:
        names = {keys[label_key(n)] for n in pattern.get("labels", []) if label_key(n) in keys}
        pattern_keys = {label_key(n) for n in names}
        count = int(pattern.get("count", 0))
        if label_key(label) in pattern_keys and not pattern_keys & others and count > 0:
            chosen.append(tuple(n for n in label_names if n in names))
            counts.append(count)
    return chosen, np.asarray(counts, np.float64)


def plan(
    targets: Mapping[str, int],
    base_counts: Mapping[str, int],
    model_labels: Mapping[str, Sequence[str]],
    *,
    weights: Mapping[str, float] | None = None,
    patterns: Mapping[str, Sequence[Mapping]] | None = None,
    comorbidity: Comorbidity = "prior",
    seed: int = 0,
) -> Plan:
    """The synthetic images to generate so that every requested label ends at max(target, base).

    `model_labels` maps each model to its card's label names; `patterns` each model to its card's
    `label_prior.patterns`. Deterministic given the seed.
    """
    if comorbidity not in ("prior", "none"):
        raise DatasetError(f"comorbidity: 'prior' or 'none', not {comorbidity!r}")
    weights = dict(weights or {m: 1.0 for m in model_labels})
    needed = deficits(base_counts, targets)
    rng = np.random.default_rng(seed)
    rows: dict[str, list[tuple[str, ...]]] = {m: [] for m in model_labels}
    requested: dict[str, dict[str, int]] = {m: {} for m in model_labels}
    for label in union_labels(model_labels):
        if label not in needed or needed[label] == 0:
            continue
        makers = {
            m: weights.get(m, 0.0)
            for m, names in model_labels.items()
            if label_key(label) in {label_key(n) for n in names}
        }
        if not makers:
            raise DatasetError(f"no model has the label {label!r}")
        for model, count in split_by_weight(needed[label], makers).items():
            if count == 0:
                continue
            requested[model][label] = count
            names = [n for n in model_labels[model]]
            own = canonical_label(label, names)
            choices, counts = ([], None)
            if comorbidity == "prior":
                choices, counts = comorbid_patterns(own, set(targets), (patterns or {}).get(model, []), names)
            if choices:
                picks = rng.choice(len(choices), size=count, p=counts / counts.sum())
                rows[model].extend(tuple(_union_name(n, model_labels) for n in choices[i]) for i in picks)
            else:
                rows[model].extend([(label,)] * count)
    return Plan(
        targets=dict(targets),
        deficits=needed,
        rows={m: r for m, r in rows.items() if r},
        requested={m: r for m, r in requested.items() if r},
    )


def _union_name(name: str, model_labels: Mapping[str, Sequence[str]]) -> str:
    return canonical_label(name, union_labels(model_labels))
