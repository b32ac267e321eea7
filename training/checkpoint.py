"""Checkpoints (safetensors + a JSON state, written atomically) and the exported-generator format.

A checkpoint holds everything to continue a run bit for bit: generator, discriminator, averaged
generator, both optimisers' state, the random generator's state and the data order. It stays in
house: it holds the discriminator. `save_generator` writes the averaged generator alone, with its
config beside the weights: that is what may leave the hospital.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from thorax.errors import UserError
from training.networks import Generator

GENERATOR_WEIGHTS = "generator.safetensors"
GENERATOR_CONFIG = "generator.json"


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _optimizer_tensors(prefix: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    state = opt.state_dict()
    tensors = {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            tensors[f"{prefix}/{index}/{key}"] = torch.as_tensor(value).detach().cpu().contiguous().clone()
    return tensors, state["param_groups"]


def _restore_optimizer(prefix: str, opt: torch.optim.Optimizer, tensors: dict, groups: list) -> None:
    params = [p for group in opt.param_groups for p in group["params"]]
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith(prefix + "/"):
            _, index, key = name.split("/", 2)
            param = params[int(index)]
            if value.shape == param.shape:  # keep the parameter's memory format (channels_last)
                value = torch.empty_like(param).copy_(value)
            state.setdefault(int(index), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": groups})


def _module_tensors(prefix: str, module: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}/{k}": v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


def _restore_module(prefix: str, module: nn.Module, tensors: dict) -> None:
    sub = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + "/")}
    module.load_state_dict(sub, strict=True)


def save_checkpoint(
    run_dir: Path,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    extra_tensors: dict[str, torch.Tensor],
    state: dict,
    keep: int = 2,
) -> Path:
    """Write `checkpoints/ckpt-<images>.safetensors` + `.json`, then point `latest.json` at them."""
    ckpt_dir = run_dir / "checkpoints"
    stem = f"ckpt-{state['images_shown']:09d}"
    tensors = dict(extra_tensors)
    groups = {}
    for name, module in modules.items():
        tensors.update(_module_tensors(name, module))
    for name, opt in optimizers.items():
        opt_tensors, groups[name] = _optimizer_tensors(name, opt)
        tensors.update(opt_tensors)
    blob = save_safetensors(tensors)
    atomic_write(ckpt_dir / f"{stem}.safetensors", blob)
    meta = {
        **state,
        "weights": f"{stem}.safetensors",
        "sha256": hashlib.sha256(blob).hexdigest(),
        "optimizer_groups": groups,
    }
    atomic_write(ckpt_dir / f"{stem}.json", json.dumps(meta, indent=1).encode())
    atomic_write(ckpt_dir / "latest.json", json.dumps({"checkpoint": f"{stem}.json"}).encode())
    for old in sorted(ckpt_dir.glob("ckpt-*.json"))[:-keep]:
        old.with_suffix(".safetensors").unlink(missing_ok=True)
        old.unlink(missing_ok=True)
    return ckpt_dir / f"{stem}.json"


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / "checkpoints" / "latest.json"
    if not pointer.is_file():
        return None
    return pointer.parent / json.loads(pointer.read_text())["checkpoint"]


def load_checkpoint(
    meta_path: Path, modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer]
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Restore modules and optimisers in place; return the JSON state and the remaining tensors."""
    meta = json.loads(meta_path.read_text())
    blob = (meta_path.parent / meta["weights"]).read_bytes()
    if hashlib.sha256(blob).hexdigest() != meta["sha256"]:
        raise UserError(f"{meta_path.parent / meta['weights']}: checksum mismatch; the checkpoint is damaged")
    tensors = load_safetensors(blob)
    for name, module in modules.items():
        _restore_module(name, module, tensors)
    for name, opt in optimizers.items():
        _restore_optimizer(name, opt, tensors, meta["optimizer_groups"][name])
    known = tuple(modules) + tuple(optimizers)
    extra = {k: v for k, v in tensors.items() if k.split("/", 1)[0] not in known}
    return meta, extra


def generator_config(
    G: Generator, label_names: tuple[str, ...], channels: dict[int, int], cfg: object | None = None
) -> dict:
    """What `load_generator` needs to rebuild G, plus the cohort it was trained on (from `cfg`)."""
    cohort = {}
    if cfg is not None and getattr(cfg, "patient_prefixes", ()):
        cohort = {"patient_prefixes": list(cfg.patient_prefixes), "cohort": cfg.cohort}
    return {
        "architecture": "thorax-pggan-generator",
        "resolution": G.resolution,
        "latent_dim": G.latent_dim,
        "label_names": list(label_names),
        "label_encoding": "continuous 0..1 per label; all zeros = no finding",
        "label_embedding": G.label_embedding,
        "label_modulation": G.label_modulation,
        "label_modulation_from": G.label_modulation_from,
        "label_variation": G.label_variation,
        "label_guidance": G.label_guidance,
        **({"label_variation_scale": G.label_variation_scale} if G.label_variation else {}),
        "channels": {str(k): v for k, v in channels.items() if k <= G.resolution},
        "output": "one-channel image, about [-1, 1]; clamp, then (x + 1) * 127.5 gives 8-bit grey",
        **cohort,
    }


def save_generator(out_dir: Path, G: Generator, config: dict, extra: dict | None = None) -> None:
    """Write the generator alone: `generator.safetensors` and `generator.json` (config + provenance)."""
    tensors = {k: v.detach().float().cpu().contiguous().clone() for k, v in G.state_dict().items()}
    atomic_write(out_dir / GENERATOR_WEIGHTS, save_safetensors(tensors))
    atomic_write(out_dir / GENERATOR_CONFIG, json.dumps({**config, **(extra or {})}, indent=1).encode())


def load_generator(model_dir: Path) -> tuple[Generator, dict]:
    """Load a generator written by `save_generator`; returns it in eval mode with its config."""
    weights, config_path = model_dir / GENERATOR_WEIGHTS, model_dir / GENERATOR_CONFIG
    if not weights.is_file() or not config_path.is_file():
        raise UserError(
            f"{model_dir}: not a generator folder (needs {GENERATOR_WEIGHTS} and {GENERATOR_CONFIG})"
        )
    config = json.loads(config_path.read_text())
    G = Generator.from_config(config)
    G.load_state_dict(load_safetensors(weights.read_bytes()), strict=True)
    return G.eval().requires_grad_(False), config
