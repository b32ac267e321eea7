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

    def get(self, ref: str | None) -> LoadedModel:
        found = find_model(ref or self.settings.default_model)  # cheap: verification comes with loading
        with self._lock:
            loaded = self._loaded.get(found.ref)
            if loaded is None:
                stored = open_model(found.ref)
                backend = open_backend(stored, self.settings)
                loaded = LoadedModel(stored, stored.card(), stored.card_sha256(), backend)
                self._loaded[stored.ref] = loaded
            return loaded

    def loaded(self) -> list[LoadedModel]:
        with self._lock:
            return list(self._loaded.values())

    def available(self) -> list[StoredModel]:
        return list_models()

    def close(self) -> None:
        with self._lock:
            for model in self._loaded.values():
                model.backend.close()
            self._loaded.clear()
