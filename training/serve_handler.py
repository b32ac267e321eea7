"""TorchServe handler for a Thorax generator, packed into the .mar by `thorax export`.

Inside the archive it sits beside `networks.py`, `latents.py`, `generator.safetensors` and
`generator.json`; in the repository it imports the same code from `training` and `thorax`. It loads
safetensors only (no pickle, no TorchScript).

Request body (JSON), one or more images:
    {"labels": [[14 values], ...] or [14 values],        one row per image, or one for all
     "seed": 42, "indices": [0, 1, 2]}                    latents from the counter-based generator
  or {"labels": ..., "z": [[latent_dim floats], ...]}     latents given explicitly
Response: the images as raw uint8 bytes, [N, H, W] in C order, with the header
`X-Thorax-Shape: N,H,W`. Pixels are round((clamp(x, -1, 1) + 1) * 127.5), the same rule as the ONNX
path, so both give the same 8-bit images.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

try:  # inside a .mar: the bundled copies
    from latents import latents_for  # type: ignore[import-not-found]
    from networks import Generator  # type: ignore[import-not-found]
except ImportError:  # in the repository
    from thorax.latents import latents_for
    from training.networks import Generator

MAX_IMAGES_PER_REQUEST = 1024
CHUNK = 64  # images per forward pass


class RequestError(ValueError):
    """A request the handler cannot serve; TorchServe answers it with an error."""


class GeneratorHandler:
    def __init__(self) -> None:
        self.initialized = False
        self.G: Generator | None = None
        self.config: dict = {}

    def initialize(self, context) -> None:
        model_dir = Path(context.system_properties.get("model_dir", "."))
        self.load(model_dir)

    def load(self, model_dir: Path) -> None:
        self.config = json.loads((model_dir / "generator.json").read_text())
        G = Generator.from_config(self.config)
        G.load_state_dict(load_file(model_dir / "generator.safetensors"), strict=True)
        self.G = G.eval().requires_grad_(False)
        if threads := os.environ.get("THORAX_TORCH_THREADS"):
            torch.set_num_threads(int(threads))
        self.initialized = True

    def parse(self, body: object) -> tuple[np.ndarray, np.ndarray]:
        """One request body -> (z float32 [n, latent], labels float32 [n, L])."""
        if isinstance(body, bytes | bytearray | str):
            try:
                body = json.loads(body)
            except ValueError as exc:
                raise RequestError(f"body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise RequestError("body must be a JSON object")
        n_labels, latent_dim = len(self.config["label_names"]), self.config["latent_dim"]
        if "z" in body:
            z = np.asarray(body["z"], dtype=np.float32)
            if z.ndim != 2 or z.shape[1] != latent_dim:
                raise RequestError(f"z must be [n, {latent_dim}], got {list(z.shape)}")
        elif "seed" in body and "indices" in body:
            indices = [int(i) for i in body["indices"]]
            z = latents_for(int(body["seed"]), indices, latent_dim)
        else:
            raise RequestError("give either z, or seed and indices")
        if not 0 < len(z) <= MAX_IMAGES_PER_REQUEST:
            raise RequestError(f"1 to {MAX_IMAGES_PER_REQUEST} images per request, got {len(z)}")
        labels = np.asarray(body.get("labels", [0.0] * n_labels), dtype=np.float32)
        if labels.ndim == 1:
            labels = np.tile(labels, (len(z), 1))
        if labels.shape != (len(z), n_labels):
            raise RequestError(
                f"labels must be [{n_labels}] or [{len(z)}, {n_labels}], got {list(labels.shape)}"
            )
        if not np.isfinite(labels).all() or labels.min() < 0 or labels.max() > 1:
            raise RequestError("labels must be finite and within 0..1")
        return z, labels

    @torch.no_grad()
    def generate(self, z: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """uint8 [n, H, W]; the network runs in chunks so that memory stays bounded."""
        out = []
        for start in range(0, len(z), CHUNK):
            images = self.G(
                torch.from_numpy(z[start : start + CHUNK]), torch.from_numpy(labels[start : start + CHUNK])
            )
            out.append(images.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)[:, 0].numpy())
        return np.concatenate(out)

    def handle(self, data: list[dict], context) -> list[bytes]:
        """TorchServe may batch several requests: generate them together, answer each separately."""
        parsed = [
            self.parse(row.get("body") if row.get("body") is not None else row.get("data")) for row in data
        ]
        images = self.generate(np.concatenate([p[0] for p in parsed]), np.concatenate([p[1] for p in parsed]))
        answers, start = [], 0
        for idx, (z, _) in enumerate(parsed):
            part = images[start : start + len(z)]
            start += len(z)
            if context is not None:
                context.set_response_content_type(idx, "application/octet-stream")
                context.set_response_header(idx, "X-Thorax-Shape", ",".join(map(str, part.shape)))
            answers.append(part.tobytes())
        return answers


_service = GeneratorHandler()


def handle(data: list[dict] | None, context) -> list[bytes] | None:
    """TorchServe's entry point."""
    if not _service.initialized:
        _service.initialize(context)
    if data is None:
        return None
    return _service.handle(data, context)
