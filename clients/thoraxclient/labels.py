"""Label names as users type them ("pleural thickening", "CARDIOMEGALY") matched to the canonical names
the gateway's model cards use. Kept here because thoraxclient installs without the `thorax` package."""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache


@lru_cache(maxsize=4096)  # called per label of every image a dataset build reads back
def label_key(name: str) -> str:
    """The form two spellings of one label share: case, spaces and underscores ignored."""
    return name.strip().lower().replace(" ", "_")


def canonical_label(name: str, label_names: Iterable[str]) -> str:
    """The canonical spelling of `name` among `label_names`; KeyError naming the known labels if none."""
    names = list(label_names)
    key = label_key(name)
    for label in names:
        if label_key(label) == key:
            return label
    raise KeyError(f"unknown label {name!r}; known labels: {', '.join(names)}")
