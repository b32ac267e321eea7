"""Training configurations, read from TOML files (`training/configs/*.toml` or any path).

A config names the target resolution, the latent size, one entry per resolution stage (channels,
batch size, kimg of fade-in and of stabilisation) and the loss and optimiser settings. Every field
has the paper's default where the paper gives one.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

from thorax.errors import UserError
from thorax.labels import NIH_LABELS

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass(frozen=True)
class StageConfig:
    resolution: int  # side of the square images this stage generates
    channels: int  # feature maps of the generator block and discriminator block at this resolution
    batch: int  # images per step while this resolution is the newest one
    fade_kimg: float  # thousands of real images shown while this resolution fades in (0 for 4x4)
    stable_kimg: float  # thousands of real images shown after the fade-in


@dataclass(frozen=True)
class TrainConfig:
    name: str
    resolution: int
    stages: tuple[StageConfig, ...]
    latent_dim: int = 512
    label_names: tuple[str, ...] = NIH_LABELS
    description: str = ""
    # Optimiser (the paper's PGGAN: Adam lr 1e-3, betas (0, 0.99)); state reset at each new resolution.
    lr: float = 1e-3
    beta1: float = 0.0
    beta2: float = 0.99
    reset_optimizer_each_stage: bool = True
    # WGAN-GP with drift, plus the auxiliary classifier's per-label sigmoid cross-entropy.
    gp_lambda: float = 10.0
    gp_every: int = 1  # compute the penalty every k-th step (scaled by k); 1 = every step
    drift: float = 0.001
    label_weight: float = 1.0
    # The critic's label head learns from generated images too (ACGAN); False = from real images only.
    label_loss_fakes: bool = True
    # Mode seeking (Mao et al. 2019, MSGAN) against collapse by conditioning: in the generator's step
    # pairs of images share a label vector but not a latent, and the loss adds
    # diversity_weight / (mean |G(z1, c) - G(z2, c)| / mean |z1 - z2| + 1e-5). 0 = off.
    diversity_weight: float = 0.0
    label_embedding: bool = False  # the generator maps the labels to latent_dim features (see networks.py)
    label_modulation: int = 0  # width of the label embedding that modulates every block; 0 = input only
    label_modulation_from: int = 4  # the smallest block side it modulates (4: every block; 16: from 16 px on)
    # Conditioning augmentation (StackGAN): the modulations' embedding is mu(labels) + sigma(labels) *
    # the latent's first label_modulation components, so one label vector draws a spread of looks;
    # the generator's loss adds label_variation_kl * KL(N(mu, sigma^2) || N(0, 1)).
    label_variation: bool = False
    label_variation_kl: float = 0.0
    projection: bool = False  # projection discriminator: the critic's score gets <W c, features>
    # The conditional terms (labels at the input, modulations, projection) are multiplied by a gain
    # that rises linearly from 0 to 1 between these two points (kimg); equal points = 1 throughout.
    cond_ramp_start_kimg: float = 0.0
    cond_ramp_end_kimg: float = 0.0
    # Differentiable augmentation of everything the critic sees (training/augment.py). augment_p is
    # the starting strength; with ada_target > 0 it adapts to the overfitting signal r_t (ADA).
    augment_p: float = 0.0
    ada_target: float = 0.0
    ada_speed_kimg: float = 100.0
    ada_p_max: float = 0.8
    # Label vectors (real and fake alike) are drawn with weight (1 / prevalence of the rarest label
    # present) ** rare_label_power: 0 = as in the data, 1 = every label about as often as any other.
    rare_label_power: float = 0.0
    # Draw each image with weight 1 / (images of its patient), so that a patient with many follow-up
    # images counts as one (nih64/1 learned the look of one patient with 61 training images).
    patient_weighting: bool = False
    # Train on one cohort only: patients whose id starts with one of these (e.g. ["nih_"] for NIH's
    # adults); empty = every patient. `cohort` names it in the model card.
    patient_prefixes: tuple[str, ...] = ()
    cohort: str = ""
    mbstd_group: int = 4
    # Exponential moving average of the generator's weights; the averaged generator is exported.
    ema_beta: float = 0.999
    ema_rampup: bool = True  # beta_k = min(ema_beta, (1 + k) / (10 + k)) at step k
    # CPU speed-ups; the gradient penalty always runs in fp32.
    bf16: bool = False
    channels_last: bool = False
    # Data.
    seed: int = 0  # the split's hash, the sample grid's latents and, unless init_seed is set, the rest
    init_seed: int | None = None  # network initialisation and the run's random stream (None: seed)
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train / validation / test, by patient
    # Reporting.
    sample_every_kimg: float = 10.0
    checkpoint_every_kimg: float = 5.0
    keep_checkpoints: int = 2

    @property
    def total_kimg(self) -> float:
        return sum(s.fade_kimg + s.stable_kimg for s in self.stages)

    def stage(self, resolution: int) -> StageConfig:
        for s in self.stages:
            if s.resolution == resolution:
                return s
        raise KeyError(resolution)

    @property
    def channels(self) -> dict[int, int]:
        return {s.resolution: s.channels for s in self.stages}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def cond_gain(self, images_shown: int) -> float:
        """The conditioning ramp's gain after `images_shown` images: 0 -> 1 over its kimg range."""
        start, end = self.cond_ramp_start_kimg * 1000, self.cond_ramp_end_kimg * 1000
        if images_shown >= end or end <= start:
            return 1.0
        return min(1.0, max(0.0, (images_shown - start) / (end - start)))


def _validate(cfg: TrainConfig, source: str) -> None:
    def fail(msg: str) -> None:
        raise UserError(f"config {source}: {msg}")

    if cfg.resolution < 4 or 2 ** int(math.log2(cfg.resolution)) != cfg.resolution:
        fail(f"resolution must be a power of two >= 4, got {cfg.resolution}")
    expected = [4 * 2**k for k in range(int(math.log2(cfg.resolution)) - 1)]
    got = [s.resolution for s in cfg.stages]
    if got != expected:
        fail(f"stages must cover resolutions {expected} in order, got {got}")
    if cfg.stages[0].fade_kimg != 0:
        fail("the 4x4 stage has nothing to fade in from: set its fade_kimg to 0")
    for s in cfg.stages:
        if s.channels < 1 or s.batch < 1 or s.fade_kimg < 0 or s.stable_kimg < 0:
            fail(f"stage {s.resolution}: channels and batch must be >= 1 and kimg >= 0")
        if s.batch % min(cfg.mbstd_group, s.batch) != 0:
            fail(f"stage {s.resolution}: batch {s.batch} is not a multiple of mbstd_group {cfg.mbstd_group}")
    if cfg.latent_dim < 1:
        fail("latent_dim must be >= 1")
    if abs(sum(cfg.split) - 1.0) > 1e-6 or min(cfg.split) < 0:
        fail(f"split fractions must be >= 0 and sum to 1, got {cfg.split}")
    if cfg.gp_every < 1:
        fail("gp_every must be >= 1")
    if cfg.label_modulation < 0:
        fail("label_modulation must be >= 0 (0 = off)")
    side = cfg.label_modulation_from
    if side < 4 or side & (side - 1) or side > cfg.resolution:
        fail(
            f"label_modulation_from must be a block side, a power of two from 4 to {cfg.resolution}, "
            f"got {side}"
        )
    if cfg.label_variation and not 0 < cfg.label_modulation <= cfg.latent_dim:
        fail("label_variation needs label modulations (label_modulation > 0, at most latent_dim)")
    if cfg.label_variation_kl < 0 or (cfg.label_variation_kl and not cfg.label_variation):
        fail("label_variation_kl must be >= 0, and is used with label_variation = true only")
    if cfg.cond_ramp_end_kimg < cfg.cond_ramp_start_kimg or cfg.cond_ramp_start_kimg < 0:
        fail("the conditioning ramp needs 0 <= cond_ramp_start_kimg <= cond_ramp_end_kimg")
    if not 0.0 <= cfg.augment_p <= 1.0 or not 0.0 <= cfg.ada_p_max <= 1.0:
        fail("augment_p and ada_p_max must lie in 0..1")
    if not 0.0 <= cfg.ada_target < 1.0 or cfg.ada_speed_kimg <= 0:
        fail("ada_target must lie in 0..1 (0 = fixed strength) and ada_speed_kimg be > 0")
    if cfg.diversity_weight < 0:
        fail("diversity_weight must be >= 0 (0 = off)")
    if cfg.diversity_weight and any(s.batch % 2 for s in cfg.stages):
        fail("diversity_weight pairs the images of a batch: every stage's batch must be even")
    if cfg.rare_label_power < 0:
        fail("rare_label_power must be >= 0")


def config_from_dict(raw: dict, source: str = "<dict>") -> TrainConfig:
    """Build and validate a config from the parsed TOML table ``raw``."""
    raw = dict(raw)
    try:
        stages = tuple(StageConfig(**s) for s in raw.pop("stages"))
    except KeyError:
        raise UserError(f"config {source}: no [[stages]] entries") from None
    except TypeError as exc:
        raise UserError(f"config {source}: bad [[stages]] entry: {exc}") from None
    for key in ("label_names", "split", "patient_prefixes"):
        if key in raw:
            raw[key] = tuple(raw[key])
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UserError(f"config {source}: unknown setting(s) {', '.join(unknown)}")
    try:
        cfg = TrainConfig(stages=stages, **raw)
    except TypeError as exc:
        raise UserError(f"config {source}: {exc}") from None
    _validate(cfg, source)
    return cfg


def _find(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.toml")))
        raise UserError(f"no config {name_or_path!r} (a file path, or one of: {names})")
    return path


def _read_raw(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """The config's settings, with those of its `base` config (by name or path) underneath them."""
    if path.resolve() in seen:
        chain = " -> ".join(str(p) for p in (*seen, path.resolve()))
        raise UserError(f"config {path}: its base configs form a loop: {chain}")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"config {path}: not valid TOML: {exc}") from None
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise UserError(f"config {path}: base must be the name or path of another config, not {base!r}")
    if Path(base).suffix:  # a file, beside this one when relative
        base_path = path.parent / base
        if not base_path.is_file():
            raise UserError(f"config {path}: its base {base!r} is not a config (no file {base_path})")
    else:
        base_path = _find(base)  # a name in training/configs
    merged = _read_raw(base_path, (*seen, path.resolve()))
    merged.update(raw)  # stages, when given, replace the base's stages as a whole
    return merged


def load_config(name_or_path: str) -> TrainConfig:
    """Load a config by name (``cxr64`` finds ``training/configs/cxr64.toml``) or by file path.

    A config may start from another one: ``base = "nih64"`` takes every setting of ``nih64.toml`` and
    the file's own settings replace those (a ``[[stages]]`` list replaces the base's whole schedule)."""
    path = _find(name_or_path)
    return config_from_dict(_read_raw(path), str(path))


__all__ = ["StageConfig", "TrainConfig", "config_from_dict", "load_config", "CONFIG_DIR"]
