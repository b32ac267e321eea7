"""The models a gateway serves: each opened (and verified) through the model store, with its backend."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from service.backends import Backend, open_backend
from service.settings import Settings
from thorax.store import StoredModel, default_ref, find_model, list_models, open_model


@dataclass
class LoadedModel:
    stored: StoredModel
    card: dict
    card_sha256: str
    backend: Backend

    @property
    def ref(self) -> str:
        return self.stored.ref

    @property
    def label_names(self) -> list[str]:
        return list(self.card["labels"]["names"])

    @property
    def resolution(self) -> int:
        return int(self.card["architecture"]["resolution"])

    @property
    def prior_patterns(self) -> list[dict]:
        return list(self.card["label_prior"]["patterns"])


class Catalog:
    """Opens models on first use and keeps them; `get` raises thorax.store.StoreError for unknown models."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._loaded: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def default_ref(self) -> str:
        if self.settings.default_model:
            return open_model(self.settings.default_model).ref
        return default_ref()

    def get(self, ref: str | None, backend: str | None = None, precision: str | None = None) -> LoadedModel:
        """The model with the gateway's backend, or with `backend` and `precision` when given (those a
        job recorded, so that its every shard is made as the first one was)."""
        found = find_model(ref or self.settings.default_model)  # cheap: verification comes with loading
        key = found.ref if backend is None else f"{found.ref} {backend} {precision}"
        with self._lock:
            loaded = self._loaded.get(key)
            default = self._loaded.get(found.ref)
            if loaded is None and default is not None and _made_with(default) == (backend, precision):
                loaded = default
            if loaded is None:
                stored = open_model(found.ref)
                opened = open_backend(stored, self.settings, backend, precision)
                loaded = LoadedModel(stored, stored.card(), stored.card_sha256(), opened)
                self._loaded[key] = loaded
            return loaded

    def loaded(self) -> list[LoadedModel]:
        with self._lock:
            return list(self._loaded.values())

    def available(self) -> list[StoredModel]:
        return list_models()

    def close(self) -> None:
        with self._lock:
            for model in {id(m): m for m in self._loaded.values()}.values():
                model.backend.close()
            self._loaded.clear()


def _made_with(model: LoadedModel) -> tuple[str, str]:
    return model.backend.name, model.backend.precision
