"""The model store: `model_store/<name>/<version>/`, verified before anything is loaded from it.

Every reader of the store (the `thorax` commands, the gateway) goes through `open_model`, which finds
a model by reference (`None` or "default" for the default, "name", "name/version") and verifies it:
every file is listed in `SHA256SUMS` with a matching checksum, no file is unlisted, and nothing is a
pickle. `model_store/default` names the default model as "name/version". `THORAX_MODEL_STORE`
points at another store. Torch-free: the gateway uses this too.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from thorax.errors import UserError

REPO_STORE = Path(__file__).resolve().parent.parent / "model_store"
SUMS = "SHA256SUMS"
CARD = "model_card.json"
DEFAULT_POINTER = "default"
PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".joblib"}


class StoreError(UserError):
    """A model is missing, damaged, tampered with, or holds something the store refuses."""


@dataclass(frozen=True)
class StoredModel:
    name: str
    version: str
    path: Path

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"

    def card(self) -> dict:
        return json.loads((self.path / CARD).read_text())

    def file(self, role: str) -> Path:
        """A file of the model by its role in the card's `files` (onnx, mar, weights, config, ...)."""
        return self.path / self.card()["files"][role]

    def card_sha256(self) -> str:
        return sha256_file(self.path / CARD)


def store_root() -> Path:
    return Path(os.environ.get("THORAX_MODEL_STORE", REPO_STORE))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_sums(folder: Path) -> Path:
    """Write `SHA256SUMS` over every other file of a model folder (sha256sum's format)."""
    lines = [
        f"{sha256_file(p)}  {p.name}\n" for p in sorted(folder.iterdir()) if p.is_file() and p.name != SUMS
    ]
    (folder / SUMS).write_text("".join(lines))
    return folder / SUMS


def _looks_like_pickle(path: Path) -> bool:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return True
    with open(path, "rb") as fh:
        head = fh.read(2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5  # pickle protocol 2..5 opcode


def _refuse_pickles(path: Path) -> None:
    if _looks_like_pickle(path):
        raise StoreError(f"{path}: looks like a pickle; the store only holds safetensors and ONNX weights")
    if zipfile.is_zipfile(path):  # a .mar archive: look inside too
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if Path(member).suffix.lower() in PICKLE_SUFFIXES or member.endswith("data.pkl"):
                    raise StoreError(f"{path}: holds {member}, a pickle; archives must carry safetensors")


def verify(model: StoredModel) -> None:
    """Check every checksum and refuse pickles; raises StoreError naming the first problem."""
    sums_path = model.path / SUMS
    if not sums_path.is_file():
        raise StoreError(f"{model.ref}: no {SUMS}; the model cannot be verified")
    listed: dict[str, str] = {}
    for line in sums_path.read_text().splitlines():
        digest, _, name = line.partition("  ")
        if not name or len(digest) != 64:
            raise StoreError(f"{sums_path}: malformed line {line!r}")
        listed[name] = digest
    present = {p.name for p in model.path.iterdir() if p.is_file() and p.name != SUMS}
    if unlisted := sorted(present - set(listed)):
        raise StoreError(f"{model.ref}: file(s) not in {SUMS}: {', '.join(unlisted)}")
    if missing := sorted(set(listed) - present):
        raise StoreError(f"{model.ref}: file(s) listed in {SUMS} are missing: {', '.join(missing)}")
    for name, digest in listed.items():
        path = model.path / name
        if sha256_file(path) != digest:
            raise StoreError(
                f"{model.ref}: {name} does not match its checksum; refusing to load a changed model"
            )
        _refuse_pickles(path)


def list_models(root: Path | None = None) -> list[StoredModel]:
    root = root or store_root()
    models = []
    for card in sorted(root.glob(f"*/*/{CARD}")):
        models.append(StoredModel(card.parent.parent.name, card.parent.name, card.parent))
    return models


def default_ref(root: Path | None = None) -> str:
    root = root or store_root()
    pointer = root / DEFAULT_POINTER
    if not pointer.is_file():
        raise StoreError(f"{root}: no `{DEFAULT_POINTER}` file names a default model")
    return pointer.read_text().strip()


def find_model(ref: str | None, root: Path | None = None) -> StoredModel:
    """Find (without verifying) a model by "name", "name/version", "default" or None."""
    root = root or store_root()
    if ref is None or ref == DEFAULT_POINTER:
        ref = default_ref(root)
    name, _, version = ref.partition("/")
    if not name or "/" in version or ".." in (name, version):
        raise StoreError(f"bad model reference {ref!r}: use NAME or NAME/VERSION")
    versions = [m for m in list_models(root) if m.name == name]
    if not versions:
        known = ", ".join(sorted({m.name for m in list_models(root)})) or "none"
        raise StoreError(f"no model {name!r} in {root} (models: {known})")
    if not version:
        return max(versions, key=lambda m: _version_key(m.version))
    for m in versions:
        if m.version == version:
            return m
    raise StoreError(
        f"model {name!r} has no version {version!r} (versions: {', '.join(m.version for m in versions)})"
    )


def open_model(ref: str | None, root: Path | None = None) -> StoredModel:
    """Find a model and verify it; the one way to get a model that may be loaded."""
    model = find_model(ref, root)
    verify(model)
    return model


def _version_key(version: str) -> tuple:
    """Numeric parts compare as numbers ("10" after "9"), other parts as text after numbers."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in version.replace("-", ".").split("."))
