"""The label space of the default models: the 14 NIH ChestX-ray14 pathologies, in NIH's order.

Each label is encoded as a continuous value in 0..1 (1 = present). "No Finding" is not a label of its
own: it is the all-zero vector.
"""

from __future__ import annotations

NIH_LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)


def canonical_label(name: str, label_names: tuple[str, ...] | list[str] = NIH_LABELS) -> str:
    """Return the canonical spelling of ``name`` among ``label_names``.

    Matching ignores case, spaces and underscores ("pleural thickening" -> "Pleural_Thickening").
    Raises KeyError naming the valid labels when there is no match.
    """
    key = name.strip().lower().replace(" ", "_")
    for label in label_names:
        if label.lower() == key:
            return label
    raise KeyError(f"unknown label {name!r}; known labels: {', '.join(label_names)}")
