"""The TorchServe backend: the model's .mar served by TorchServe, called over HTTP with the handler's
protocol (`{"seed", "indices", "labels"}` in, raw uint8 [N, H, W] out with `X-Thorax-Shape`)."""

from __future__ import annotations

import httpx
import numpy as np

from service.backends import BackendError
from thorax.store import StoredModel


class TorchServeBackend:
    name = "torchserve"
    precision = "fp32"  # the handler runs the generator in fp32

    def __init__(self, model: StoredModel, base_url: str, timeout: float = 120.0) -> None:
        self.url = f"{base_url.rstrip('/')}/predictions/{model.file('mar').stem}"
        self.client = httpx.Client(timeout=timeout)

    def generate(self, seed: int, indices: list[int], labels: np.ndarray) -> np.ndarray:
        body = {"seed": seed, "indices": list(indices), "labels": labels.tolist()}
        try:
            response = self.client.post(self.url, json=body)
        except httpx.HTTPError as exc:
            raise BackendError(f"TorchServe at {self.url}: {exc}") from exc
        if response.status_code != 200:
            raise BackendError(f"TorchServe answered {response.status_code}: {response.text[:300]}")
        try:
            shape = tuple(int(n) for n in response.headers["X-Thorax-Shape"].split(","))
            return np.frombuffer(response.content, np.uint8).reshape(shape)
        except (KeyError, ValueError) as exc:
            raise BackendError(f"TorchServe gave an answer that is not images: {exc}") from exc

    def close(self) -> None:
        self.client.close()
