"""Where models live: `model_store/<name>/<version>/`, with `model_store/DEFAULT` naming the default.

`THORAX_MODEL_STORE` points elsewhere. The export work adds ONNX, archives, cards and checksums.
"""

from __future__ import annotations

import os
from pathlib import Path

from thorax.errors import UserError

REPO_STORE = Path(__file__).resolve().parent.parent / "model_store"


def store_root() -> Path:
    return Path(os.environ.get("THORAX_MODEL_STORE", REPO_STORE))


def resolve_model(ref: str | None) -> Path:
    """A model folder from `None` (the default), `name`, `name/version`, or a folder path."""
    if ref and Path(ref).is_dir() and (Path(ref) / "generator.json").is_file():
        return Path(ref)
    root = store_root()
    if ref is None or ref == "default":
        pointer = root / "DEFAULT"
        if not pointer.is_file():
            raise UserError(f"{root}: no DEFAULT file names a default model")
        ref = pointer.read_text().strip()
    name, _, version = ref.partition("/")
    if not version:
        versions = sorted(p.name for p in (root / name).glob("*") if (p / "generator.json").is_file())
        if not versions:
            raise UserError(f"no model {name!r} in {root}")
        version = versions[-1]
    folder = root / name / version
    if not (folder / "generator.json").is_file():
        raise UserError(f"no model {name}/{version} in {root}")
    return folder
