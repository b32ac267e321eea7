"""The real-trained classifier of `thorax evaluate`, kept on disk so that a second evaluation skips its
training (a minute or two on 2 cores at 64 px): the fast checks (`--checks sweep,collapse`) then cost
only the generated images.

One entry per key: the data folder, a hash of its label table (so a grown data set trains anew), the
cohort's patient prefixes, the resolution the images were loaded at, the classifier's input side,
kind, epochs and seed, the split's fractions and hash seed, and the label names. The weights are a
safetensors file named by a hash of the key; a JSON file beside it holds the key itself and what the
training reported (best epoch, validation AUC, seconds), and results that depend on nothing but the
classifier and its data (`save_extra`: the real images' spread of the collapse detector). The
folder is `$THORAX_CACHE_DIR`, else `~/.cache/thorax`; deleting it is always safe.

**Shipped judges.** Trained with the same seed, the classifier still differs from machine to machine
(thread counts and CPU kernels change the sums, and 15 epochs with a best-epoch pick amplify it), and
so do the figures it judges. The project therefore keeps the judges its README's figures were measured
with in `training/judges/`, keyed like the cache but without the data folder's path (the label
table's hash names the data). When the cache has no entry, a shipped one with the same key is copied
into it and used; `--no-cache` still trains anew. `ship_classifier` puts a cache entry there.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path

from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from training import classifier as clf
from training.checkpoint import atomic_write

CACHE_VERSION = 1  # raise when the classifier's training changes, so that old entries are not reused


def cache_root() -> Path:
    """`$THORAX_CACHE_DIR`, else `~/.cache/thorax`."""
    return Path(os.environ.get("THORAX_CACHE_DIR") or Path.home() / ".cache" / "thorax")


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def entry_path(root: Path, key: dict) -> Path:
    """Where the weights of `key` live: `classifiers/<hash of the key>.safetensors` under `root`."""
    digest = hashlib.sha256(json.dumps({"version": CACHE_VERSION, **key}, sort_keys=True).encode())
    return root / "classifiers" / f"{digest.hexdigest()[:24]}.safetensors"


SHIPPED_JUDGES = Path(__file__).resolve().parent / "judges"


def shipped_path(key: dict, folder: Path | None = None) -> Path:
    """Where a shipped judge of `key` lives: named by a hash of the key without the data folder's path."""
    folder = folder or SHIPPED_JUDGES
    portable = {k: v for k, v in key.items() if k != "data"}
    digest = hashlib.sha256(json.dumps({"version": CACHE_VERSION, **portable}, sort_keys=True).encode())
    return folder / f"{digest.hexdigest()[:24]}.safetensors"


def seed_from_shipped(root: Path, key: dict, folder: Path | None = None) -> bool:
    """Copy the shipped judge of `key` into the cache when the cache has none; True when one was copied."""
    weights, shipped = entry_path(root, key), shipped_path(key, folder)
    if weights.is_file() or not shipped.is_file():
        return False
    meta = json.loads(shipped.with_suffix(".json").read_text())
    portable = {k: v for k, v in key.items() if k != "data"}
    if {k: v for k, v in meta["key"].items() if k != "data"} != portable:
        return False
    weights.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(weights, shipped.read_bytes())
    meta = {**meta, "key": key, "shipped": shipped.name}
    atomic_write(weights.with_suffix(".json"), json.dumps(meta, indent=1).encode())
    return True


def ship_classifier(root: Path, key: dict, folder: Path | None = None) -> Path:
    """Put the cache entry of `key` among the shipped judges (its key without the data path, no extras)."""
    folder = folder or SHIPPED_JUDGES
    weights = entry_path(root, key)
    meta = json.loads(weights.with_suffix(".json").read_text())
    target = shipped_path(key, folder)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, target)
    meta = {k: v for k, v in meta.items() if k != "extras"}
    meta["key"] = {k: v for k, v in key.items() if k != "data"}
    target.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    return target


def shipped_name(root: Path, key: dict) -> str | None:
    """The shipped judge's file name that the cache entry of `key` was copied from, if it was."""
    try:
        return json.loads(entry_path(root, key).with_suffix(".json").read_text()).get("shipped")
    except (OSError, ValueError):
        return None


def load_classifier(root: Path, key: dict, outputs: int) -> clf.TrainResult | None:
    """The cached classifier of `key` in eval mode, or None when there is none (or it is unreadable)."""
    weights = entry_path(root, key)
    meta_path = weights.with_suffix(".json")
    if not (weights.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("key") != key:  # a hash collision or a hand-edited entry: train anew
            return None
        model = clf.build(key["classifier"], outputs)
        model.load_state_dict(load_safetensors(weights.read_bytes()), strict=True)
    except (OSError, ValueError, RuntimeError, KeyError):
        return None
    val_auc = meta.get("val_auc")
    return clf.TrainResult(
        model.eval(), meta["best_epoch"], math.nan if val_auc is None else val_auc, meta["seconds"], []
    )


def save_classifier(root: Path, key: dict, result: clf.TrainResult) -> Path:
    """Write `result`'s weights and the key beside them (atomically: a concurrent reader sees all or none)."""
    weights = entry_path(root, key)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in result.model.state_dict().items()}
    atomic_write(weights, save_safetensors(tensors))
    meta = {
        "key": key,
        "best_epoch": result.best_epoch,
        "val_auc": None if math.isnan(result.val_auc) else round(result.val_auc, 4),
        "seconds": round(result.seconds, 1),
    }
    atomic_write(weights.with_suffix(".json"), json.dumps(meta, indent=1).encode())
    return weights


def load_extra(weights: Path, name: str) -> dict | None:
    """A result computed with the cached classifier and stored beside it (`save_extra`), or None."""
    try:
        return json.loads(weights.with_suffix(".json").read_text()).get("extras", {}).get(name)
    except (OSError, ValueError):
        return None


def save_extra(weights: Path, name: str, value: dict) -> None:
    """Keep `value` (JSON) beside the cached classifier whose weights are `weights`, under `name`."""
    meta_path = weights.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    meta.setdefault("extras", {})[name] = value
    atomic_write(meta_path, json.dumps(meta, indent=1).encode())
