"""`thorax export`: a training run's averaged generator -> `model_store/<name>/<version>/`.

Writes the generator alone (never the discriminator, the optimiser state or a training image):
    generator.safetensors, generator.json    weights and config (for PyTorch and TorchServe)
    generator.onnx                           z [N, latent], labels [N, L] -> images [N, 1, H, W] in [-1, 1]
    <name>.mar, model-config.yaml            the TorchServe archive and its batching settings
    samples.png                              one row per condition, fixed latents
    model_card.json, model_card.md           the card (validated by thoraxclient.model_card.ModelCard)
    SHA256SUMS                               over every other file
The folder is built beside the store and moved into place whole, so a failed export leaves nothing.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import torch
from safetensors.torch import load as load_safetensors

from thorax.errors import UserError
from thorax.latents import latents_for
from thorax.store import DEFAULT_POINTER, StoredModel, store_root, verify, write_sums
from training import serve_handler
from training.checkpoint import generator_config, latest_checkpoint, load_generator, save_generator
from training.config import config_from_dict
from training.data import read_label_table
from training.networks import Generator, LabelGuidance, fold_equalized_lr
from training.sample import sample_grid
from training.train import make_generator

if TYPE_CHECKING:
    from thoraxclient.model_card import ModelCard

ONNX_OPSET = 18
PARITY_TOLERANCE = 1e-4
REPO = Path(__file__).resolve().parent.parent

# What the project knows of the datasets in shared/data/cxr256, by patient-id prefix.
KNOWN_SOURCES = {
    "nih_": (
        "NIH ChestX-ray14 (adults)",
        "NIH Clinical Center: no restrictions on the use of the NIH chest x-ray images",
        "NIH Clinical Center, https://nihcc.app.box.com/v/ChestXray-NIHCC; Wang et al., 'ChestX-ray8: "
        "Hospital-scale Chest X-ray Database and Benchmarks', IEEE CVPR 2017. We acknowledge the NIH "
        "Clinical Center for providing the data.",
    ),
    "kermany_": (
        "Kermany 2018 paediatric pneumonia (children aged 1-5)",
        "CC BY 4.0",
        "Kermany, Zhang, Goldbaum (2018), 'Labeled Optical Coherence Tomography (OCT) and Chest X-Ray "
        "Images for Classification', Mendeley Data V2, doi:10.17632/rscbjbr9sj.2",
    ),
    "ieee8023_": (
        "ieee8023 COVID-19 image data collection (permissively licensed images only)",
        "CC BY 3.0 or CC BY 4.0, per image (see the data's ieee8023_image_licenses.csv)",
        "Cohen et al., 'COVID-19 Image Data Collection: Prospective Predictions Are the Future', "
        "arXiv:2006.11988; each image's licence, DOI and URL are listed in ieee8023_image_licenses.csv",
    ),
}
MIXED_COHORT_CAVEAT = (
    "Adults and children are mixed: Pneumonia and No Finding come mostly from the paediatric "
    "(Kermany) set, the other labels from NIH adults, so the label also moves the age look."
)
NIH_CAVEATS = [
    "811 of the 1,408 NIH images were 64 px at the source (upsampled for this data set): above 64 px "
    "most adult images are blurry; the 535 added last are sharp.",
]


def cxr256_caveats(prefixes: set[str], label_counts: dict[str, int]) -> list[str]:
    """What a card must say about training data drawn from shared/data/cxr256's sources."""
    caveats = []
    if "kermany_" in prefixes and len(prefixes) > 1:
        caveats.append(MIXED_COHORT_CAVEAT)
    if "nih_" in prefixes:
        caveats += NIH_CAVEATS
    rare = sorted((count, name) for name, count in label_counts.items())[:3]
    if rare and len(label_counts) > 1:
        listed = ", ".join(f"{name} {count}" for count, name in rare)
        caveats.append(f"Rare labels have few training examples ({listed}).")
    if prefixes == {"kermany_"}:
        caveats.append("Children aged 1-5 only: not a model of adult chest radiographs.")
    return caveats


class ExportError(UserError):
    """The export could not be made or failed its own checks; nothing was written to the store."""


# ---- the generator from a run ------------------------------------------------------------------
def load_run_generator(source: Path) -> tuple[Generator, dict, Path]:
    """The averaged generator of a run folder (its latest checkpoint), of one checkpoint's JSON, or of
    a stored model's folder (its verified weights, with the run it was exported from for the card)."""
    if (source / "model_card.json").is_file() and (source / "generator.json").is_file():
        return load_stored_generator(source)
    if source.is_dir():
        meta_path = latest_checkpoint(source)
        if meta_path is None:
            raise ExportError(f"{source}: no checkpoints/latest.json; is this a run folder?")
    elif source.suffix == ".json" and source.is_file():
        meta_path = source
    else:
        raise ExportError(f"{source}: give a run folder or a checkpoint's .json file")
    run_dir = meta_path.parent.parent
    cfg = config_from_dict(json.loads((run_dir / "config.json").read_text()), str(run_dir / "config.json"))
    meta = json.loads(meta_path.read_text())
    tensors = load_safetensors((meta_path.parent / meta["weights"]).read_bytes())
    G = make_generator(cfg)
    G.load_state_dict({k.removeprefix("G_ema/"): v for k, v in tensors.items() if k.startswith("G_ema/")})
    info = {"cfg": cfg, "meta": meta, "run_dir": run_dir}
    return G.eval().requires_grad_(False), info, meta_path


def load_stored_generator(folder: Path) -> tuple[Generator, dict, Path]:
    """A stored model's generator, to export again under another name or setting (a label guidance).

    The weights are the stored ones, checked against its SHA256SUMS; the card's training account comes
    from the run folder its generator.json names, which must still hold config.json and split.json."""
    stored = StoredModel(folder.parent.name, folder.name, folder)
    verify(stored)
    G, config = load_generator(folder)
    recorded = config.get("exported_from")
    run_dir = Path(recorded).parent.parent if recorded else None
    if run_dir is None or not (run_dir / "config.json").is_file() or not (run_dir / "split.json").is_file():
        raise ExportError(
            f"{folder}: the run it was exported from ({recorded or 'not recorded'}) has no config.json "
            "and split.json here; export from the run folder instead (run thorax from the repository root)"
        )
    cfg = config_from_dict(json.loads((run_dir / "config.json").read_text()), str(run_dir / "config.json"))
    card = stored.card()
    meta = {
        "images_shown": round(config["kimg"] * 1000),
        "torch": card["software"].get("trained_with_torch", "unknown"),
        "bf16": card["architecture"]["precision"].startswith("bf16"),
    }
    info = {"cfg": cfg, "meta": meta, "run_dir": run_dir, "weights_from": stored.ref}
    return G, info, Path(recorded)


# ---- ONNX --------------------------------------------------------------------------------------
class _OnnxGenerator(torch.nn.Module):
    """The exported graph: the generator at its full resolution, clamped to [-1, 1]."""

    def __init__(self, G: Generator) -> None:
        super().__init__()
        self.G = G

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.G(z, labels).clamp(-1.0, 1.0)


def export_onnx(G: Generator, path: Path) -> None:
    """Export with the equalized-LR scales folded in, so initializers carry the parameter names."""
    wrapper = _OnnxGenerator(fold_equalized_lr(copy.deepcopy(G))).eval()
    z, labels = torch.randn(2, G.latent_dim), torch.rand(2, G.num_labels)
    batch = torch.export.Dim("batch", min=1, max=4096)
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # it warns about torchvision ops this graph does not use
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper,
            (z, labels),
            dynamo=True,
            opset_version=ONNX_OPSET,
            input_names=["z", "labels"],
            output_names=["images"],
            dynamic_shapes={"z": {0: batch}, "labels": {0: batch}},
            verbose=False,
        )
    exporter_log.setLevel(level)
    program.save(str(path))
    path.chmod(0o644)
    onnx.checker.check_model(str(path), full_check=True)


def onnx_parity(G: Generator, path: Path, batches: tuple[int, ...] = (1, 16)) -> float:
    """Largest absolute difference between onnxruntime and PyTorch over seeded inputs."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for n in batches:
        z = latents_for(1234, range(n), G.latent_dim)
        labels = np.random.default_rng(n).random((n, G.num_labels), dtype=np.float32)
        (ours,) = session.run(["images"], {"z": z, "labels": labels})
        with torch.no_grad():
            ref = G(torch.from_numpy(z), torch.from_numpy(labels)).clamp(-1, 1).numpy()
        worst = max(worst, float(np.abs(ours - ref).max()))
    return worst


# ---- TorchServe archive ------------------------------------------------------------------------
def model_config_yaml(batch_size: int, max_batch_delay_ms: int) -> str:
    return (
        "# TorchServe settings for this generator (travel inside the .mar).\n"
        "minWorkers: 1\n"
        "maxWorkers: 1\n"
        f"batchSize: {batch_size}\n"
        f"maxBatchDelay: {max_batch_delay_ms}\n"
        "responseTimeout: 300\n"
    )


def build_mar(folder: Path, name: str, version: str) -> Path:
    """Pack handler, network code, safetensors weights and config with torch-model-archiver."""
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp)
        shutil.copy(Path(serve_handler.__file__), stage / "serve_handler.py")
        shutil.copy(REPO / "training" / "networks.py", stage / "networks.py")
        shutil.copy(REPO / "thorax" / "latents.py", stage / "latents.py")
        extra_files = (stage / "networks.py", stage / "latents.py", folder / "generator.json")
        archiver = shutil.which(
            "torch-model-archiver", path=str(Path(sys.executable).parent)
        ) or shutil.which("torch-model-archiver")
        if archiver is None:
            raise ExportError("torch-model-archiver is not installed (pip install torch-model-archiver)")
        cmd = [
            archiver,
            "--model-name", name,
            "--version", version,
            "--handler", str(stage / "serve_handler.py"),
            "--serialized-file", str(folder / "generator.safetensors"),
            "--extra-files", ",".join(str(p) for p in extra_files),
            "--config-file", str(folder / "model-config.yaml"),
            "--export-path", str(folder),
            "--force",
        ]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise ExportError(
                f"torch-model-archiver failed: {result.stderr.strip() or result.stdout.strip()}"
            )
    return folder / f"{name}.mar"


# ---- the model card ----------------------------------------------------------------------------
def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()  # fmt: skip
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def training_data_summary(
    run_dir: Path, label_names: tuple[str, ...], fractions: tuple[float, float, float]
) -> tuple[dict, dict]:
    """(training_data, label_prior) sections of the card from the run's split and label table (either
    layout that training reads)."""
    split = json.loads((run_dir / "split.json").read_text())
    table_path = Path(split["label_table"])
    if not table_path.is_file():
        raise ExportError(f"{table_path}: the run's label table is gone; cannot describe the training data")
    table = read_label_table(table_path, label_names)
    train_files = set(split["train"])
    keep = [i for i, f in enumerate(table.filenames) if f in train_files]
    if not keep:
        raise ExportError(f"{table_path}: none of the run's training images are in its label table")
    patients = [table.patient_ids[i] for i in keep]
    positive = table.labels[keep] >= 0.5  # [N, L]
    n = len(keep)
    all_files = sum(len(split[k]) for k in ("train", "val", "test"))
    sources = []
    by_prefix = Counter(next((p for p in KNOWN_SOURCES if pid.startswith(p)), "") for pid in patients)
    for prefix, count in sorted(by_prefix.items(), key=lambda kv: -kv[1]):
        name, licence, attribution = KNOWN_SOURCES.get(
            prefix, (f"local data ({table_path})", "not stated", "")
        )
        sources.append({"name": name, "images": count, "licence": licence, "attribution": attribution})
    patterns = Counter(tuple(name for name, p in zip(label_names, row, strict=True) if p) for row in positive)
    shares = "/".join(f"{round(100 * f):g}" for f in fractions)
    label_counts = {name: int(c) for name, c in zip(label_names, positive.sum(0), strict=True)}
    known = set(by_prefix) <= set(KNOWN_SOURCES)
    training_data = {
        "description": f"{n} training images of {len(set(patients))} patients from "
        f"{table_path.parent.name}/{table_path.name}",
        "sources": sources,
        "images_total": all_files,
        "train_images": n,
        "train_patients": len(set(patients)),
        "split": f"patient-disjoint {shares} train/validation/test by a hash of the patient id; only the "
        "training split was shown to the GAN (the split is saved with the run as split.json)",
        "label_counts": label_counts,
        "no_finding_images": int((~positive.any(1)).sum()),
        "caveats": cxr256_caveats(set(by_prefix), label_counts) if known else [],
    }
    both = positive.T.astype(np.float64) @ positive.astype(np.float64) / n  # [L, L]
    label_prior = {
        "frequency": {
            name: round(float(f), 6) for name, f in zip(label_names, positive.mean(0), strict=True)
        },
        "cooccurrence": [[round(float(v), 6) for v in row] for row in both],
        "patterns": [{"labels": list(k), "count": c} for k, c in patterns.most_common()],
    }
    return training_data, label_prior


def conditioning_summary(cfg) -> str:
    """The card's one-line account of how the labels reach both networks, from the run's config."""
    parts = ["labels concatenated with the latent at the input"]
    if cfg.label_embedding:
        parts[0] = "labels embedded to the latent's width at the input"
    if cfg.label_modulation:
        reach = "every block's features"
        if cfg.label_modulation_from > 4:
            reach = f"the features of every block from {cfg.label_modulation_from} px on"
        drawn = (
            ", drawn around its mean with the latent (conditioning augmentation),"
            if cfg.label_variation
            else ""
        )
        parts.append(f"a {cfg.label_modulation}-d label embedding{drawn} scales and shifts {reach}")
    reals_only = "" if cfg.label_loss_fakes else ", trained on real images only"
    acgan = f"the ACGAN head (weight {cfg.label_weight:g}{reals_only})" if cfg.label_weight else ""
    if cfg.projection:
        parts.append(
            "projection critic (linear label embedding)" + (f" plus {acgan}" if acgan else ", no ACGAN head")
        )
    else:
        parts.append(f"{acgan} on the critic" if acgan else "no label term in the critic")
    if cfg.cond_ramp_end_kimg > cfg.cond_ramp_start_kimg:
        parts.append(
            f"conditioning ramped in from {cfg.cond_ramp_start_kimg:g} to {cfg.cond_ramp_end_kimg:g} kimg"
        )
    if cfg.ada_target:
        parts.append(f"adaptive augmentation of the critic's inputs (target r_t {cfg.ada_target:g})")
    elif cfg.augment_p:
        parts.append(f"augmentation of the critic's inputs (p {cfg.augment_p:g})")
    if cfg.diversity_weight:
        parts.append(f"mode-seeking term against collapse (weight {cfg.diversity_weight:g})")
    if cfg.patient_weighting:
        parts.append("each image drawn with weight 1 / (images of its patient)")
    if cfg.rare_label_power:
        parts.append(f"label vectors drawn with weight prevalence^-{cfg.rare_label_power:g}")
    return "; ".join(parts)


def build_card(name: str, version: str, G: Generator, info: dict, files: dict) -> ModelCard:
    from thoraxclient.model_card import ModelCard  # here, so that export_onnx needs no pydantic

    cfg, meta = info["cfg"], info["meta"]
    training_data, label_prior = training_data_summary(info["run_dir"], cfg.label_names, cfg.split)
    if cfg.patient_prefixes:
        training_data["cohort"] = cfg.cohort or ", ".join(f"{p}*" for p in cfg.patient_prefixes)
    import onnxruntime

    software = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "thorax": __import__("thorax").__version__,
        "trained_with_torch": meta.get("torch", "unknown"),
    }
    card = {
        "name": name,
        "version": version,
        "created": dt.datetime.now(dt.UTC).replace(microsecond=0),
        "git_commit": _git_commit(),
        "software": software,
        "architecture": {
            "family": "conditional progressive-growing GAN (PGGAN), generator only",
            "resolution": cfg.resolution,
            "latent_dim": cfg.latent_dim,
            "parameters": sum(p.numel() for p in G.parameters()),
            "channels": {str(s.resolution): s.channels for s in cfg.stages},
            "stages": [s.__dict__ for s in cfg.stages],
            "kimg": meta["images_shown"] / 1000,
            "total_kimg": cfg.total_kimg,
            "complete": meta["images_shown"] >= round(cfg.total_kimg * 1000),
            "loss": f"WGAN-GP (lambda {cfg.gp_lambda:g}, every {cfg.gp_every} step(s)), drift {cfg.drift:g}, "
            f"auxiliary per-label sigmoid cross-entropy (weight {cfg.label_weight:g}) "
            + ("on reals and fakes" if cfg.label_loss_fakes else "on reals (critic) and fakes (generator)"),
            "ema_beta": cfg.ema_beta,
            "precision": "bf16 autocast, gradient penalty in fp32" if meta.get("bf16") else "fp32",
            "conditioning": conditioning_summary(cfg),
            "label_guidance": G.label_guidance,
            "label_variation_scale": G.label_variation_scale,
        },
        "labels": {
            "names": list(cfg.label_names),
            "encoding": "continuous 0..1 per label; all zeros = no finding",
        },
        "training_data": training_data,
        "label_prior": label_prior,
        "onnx": {
            "file": files["onnx"],
            "opset": ONNX_OPSET,
            "inputs": {"z": ["N", cfg.latent_dim], "labels": ["N", len(cfg.label_names)]},
            "outputs": {"images": ["N", 1, cfg.resolution, cfg.resolution]},
        },
        "files": files,
        "intended_use": "Generating synthetic chest radiographs with chosen pathology labels for research: "
        "enlarging or rebalancing training sets of classifiers, pooling data of several sites without "
        "sharing patients, teaching and software testing.",
        "not_for": [
            "diagnosis or any clinical decision about a patient",
            "estimating the prevalence of a disease",
            "evaluating a classifier in place of real held-out radiographs",
        ],
        "privacy": "Only the generator's weights are shared: no discriminator, optimiser state or training "
        "image is in this folder or in the TorchServe archive. A generator can still memorise training "
        "images; run `thorax evaluate` (nearest-neighbour check) before sharing a new model.",
        "limitations": [
            f"{cfg.resolution} px only; images are blurry next to clinical radiographs.",
            f"Trained on {training_data['train_images']:,} public radiographs on a CPU: rare labels have "
            "little signal; see the evaluation for how well each label is drawn.",
            *training_data["caveats"],
        ],
        "evaluation": None,
    }
    return ModelCard.model_validate(card)


def _evaluation_value(key: str, v: object) -> str:
    if key == "label_guidance":
        from thoraxclient.model_card import describe_label_guidance

        return describe_label_guidance(v)  # type: ignore[arg-type]
    return ", ".join(map(str, v)) if isinstance(v, list) else str(v)


def card_markdown(card: ModelCard) -> str:
    from thoraxclient.model_card import NO_FINDING, guidance_own_labels, is_guidance_place

    a, d = card.architecture, card.training_data
    progress = "the whole schedule" if a.complete else "stopped before the end of its schedule"
    if card.evaluation is None:
        evaluation = "Not evaluated yet (`thorax evaluate`)."
    else:
        rows = [
            f"| {key.replace('_', ' ')} | {_evaluation_value(key, v)} |" for key, v in card.evaluation.items()
        ]
        header = "From `thorax evaluate`; every figure is in `evaluation.json`."
        evaluation = "\n".join([header, "", "| measure | value |", "|---|---|", *rows])
    counts = "\n".join(
        f"| {n} | {d.label_counts[n]} | {card.label_prior.frequency[n]:.3f} |" for n in card.labels.names
    )
    sources = "\n".join(
        f"- **{s.name}** ({s.images} training images). Licence: {s.licence}. {s.attribution}"
        for s in d.sources
    )
    conditioning = f"\nConditioning: {a.conditioning}." if a.conditioning else ""
    if a.is_guided() and isinstance(a.label_guidance, dict):
        keys = list(a.label_guidance)
        own = guidance_own_labels(a.label_guidance)
        if any(is_guidance_place(k) for k in keys):
            where = (
                "at each place named (the labels beside the latent, or the modulations of the blocks of "
                "that side) every label's change from no finding is taken that many times as far as the "
                "network was trained to draw it; "
                + ("elsewhere at the strength given for elsewhere" if "*" in keys else "elsewhere as trained")
            )
        else:
            where = (
                "every label's change from no finding is taken that many times as far as the network was "
                "trained to draw it"
            )
        labels = (
            f"; an image with {' or '.join(own)} takes that label's own strength at every place (of two "
            "such labels, the one whose strength differs more from the place's; a fraction of a label, that "
            "fraction of the way)"
            if own
            else ""
        )
        conditioning += (
            f"\nLabel guidance {a.label_guidance_text()}: {where}{labels}; no finding itself as trained: "
            "stronger signs of disease, at some cost in variety within a label."
        )
    elif a.is_guided():
        conditioning += (
            f"\nLabel guidance {a.label_guidance:g}: every label is drawn {a.label_guidance:g} times as far "
            "from no finding as the network was trained to draw it (no finding itself is unchanged), "
            "for stronger signs of disease at the cost of variety within a label."
        )
    if isinstance(a.label_variation_scale, dict):
        no_finding = NO_FINDING in a.label_variation_scale
        conditioning += (
            f"\nLabel variation scale {a.label_variation_text()}: for an image with one of these labels "
            + (f"({NO_FINDING}: an image without a label) " if no_finding else "")
            + "the spread of the drawn label embedding is that many times the trained one (the widest of "
            "its labels'), for more variety within the label; the other labels"
            + ("" if no_finding else ", and no finding,")
            + " as trained."
        )
    elif a.label_variation_scale != 1.0:
        conditioning += (
            f"\nLabel variation scale {a.label_variation_scale:g}: the spread of the drawn label embedding "
            f"is {a.label_variation_scale:g} times the trained one, for "
            + ("more" if a.label_variation_scale > 1 else "less")
            + " variety within a label."
        )
    cohort = f" One cohort only: {d.cohort}." if d.cohort else ""
    return f"""# Model card: {card.name} {card.version}

Created {card.created.isoformat()} from commit `{card.git_commit}`.

## What it is
A {a.family} that draws one-channel {a.resolution}x{a.resolution} chest radiographs from a
{a.latent_dim}-d Gaussian latent and {len(card.labels.names)} pathology labels ({card.labels.encoding}).
{a.parameters:,} parameters. Trained for {a.kimg:g} of {a.total_kimg:g} kimg ({progress}); {a.loss};
EMA {a.ema_beta}; {a.precision}.{conditioning}

Files: {", ".join(f"`{v}` ({k})" for k, v in card.files.items())}.

## Intended use
{card.intended_use}

Not for: {"; ".join(card.not_for)}.

## Training data
{d.description}.{cohort} {d.split}.

{sources}

| label | positive training images | frequency |
|---|---|---|
{counts}

No finding: {d.no_finding_images} images.

## Privacy
{card.privacy}

## Known limitations
{chr(10).join("- " + item for item in card.limitations)}

## Evaluation
{evaluation}
"""


# ---- the whole export --------------------------------------------------------------------------
def export_model(
    source: Path,
    name: str,
    version: str,
    store: Path | None = None,
    make_default: bool = False,
    batch_size: int = 8,
    max_batch_delay_ms: int = 20,
    force: bool = False,
    label_guidance: LabelGuidance | None = None,
    label_variation_scale: float | dict[str, float] | None = None,
) -> StoredModel:
    """Export a run's generator into `<store>/<name>/<version>/`; see the module docstring.

    `label_guidance` (a number in (0, 10], or one per place such as {"16": 2.5}; None keeps the
    source's, 1.0 for a run) is baked into every file: the ONNX graph, the TorchServe archive's
    generator.json and the sample grid draw each label that much further from no finding
    (`Generator`'s docstring); the card records it. `label_variation_scale` (None keeps the source's)
    is baked in the same way: the spread of a conditioning-augmented label embedding, times that."""
    store = store or store_root()
    if (
        not name.replace("-", "").replace("_", "").isalnum()
        or not version.replace(".", "").replace("-", "").isalnum()
    ):
        raise ExportError(f"name {name!r} and version {version!r} may hold letters, digits, '-', '_' and '.'")
    target = store / name / version
    if target.exists() and not force:
        raise ExportError(f"{target} exists; give another --version (or --force to replace it)")
    G, info, meta_path = load_run_generator(source)
    try:
        G.set_sampling(label_guidance=label_guidance, label_variation_scale=label_variation_scale)
    except ValueError as exc:  # the value, the places this generator has, whether it draws its embedding
        raise ExportError(str(exc)) from None
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{version}-"))
    try:
        cfg = info["cfg"]
        provenance = {"exported_from": str(meta_path), "kimg": info["meta"]["images_shown"] / 1000}
        if "weights_from" in info:
            provenance["weights_from"] = info["weights_from"]
        save_generator(work, G, generator_config(G, cfg.label_names, cfg.channels, cfg), provenance)
        export_onnx(G, work / "generator.onnx")
        worst = onnx_parity(G, work / "generator.onnx")
        if worst > PARITY_TOLERANCE:
            raise ExportError(f"onnxruntime differs from PyTorch by {worst:.2e} (> {PARITY_TOLERANCE:g})")
        (work / "model-config.yaml").write_text(model_config_yaml(batch_size, max_batch_delay_ms))
        mar = build_mar(work, name, version)
        sample_grid(G, seed=0, columns=8).save(work / "samples.png")
        files = {
            "onnx": "generator.onnx",
            "weights": "generator.safetensors",
            "config": "generator.json",
            "mar": mar.name,
            "torchserve_config": "model-config.yaml",
            "samples": "samples.png",
            "card_markdown": "model_card.md",
        }
        card = build_card(name, version, G, info, files)
        (work / "model_card.json").write_text(card.model_dump_json(indent=1))
        (work / "model_card.md").write_text(card_markdown(card))
        write_sums(work)
        verify(StoredModel(name, version, work))
        # reload what was written, as every reader will, and compare with the source generator
        reloaded, _ = load_generator(work)
        for key, value in G.state_dict().items():
            if not torch.equal(reloaded.state_dict()[key], value):
                raise ExportError(f"the written weights differ from the run's at {key}")
        work.chmod(0o755)
        if target.exists():
            shutil.rmtree(target)
        work.rename(target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if make_default:
        (store / DEFAULT_POINTER).write_text(f"{name}/{version}\n")
    return StoredModel(name, version, target)
