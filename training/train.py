"""The training loop: progressive growing, WGAN-GP with the label loss, EMA, checkpoints, samples.

A run lives in one folder:
    config.json           the config it was started with (authoritative on resume)
    split.json            the patient-disjoint train/val/test split of the data
    log.jsonl             one JSON line of progress per report
    samples/              grids from the averaged generator at every phase and every few kimg
    checkpoints/          safetensors + JSON state; `latest.json` names the newest (stays in house)
    generator/            the averaged generator alone, refreshed at every checkpoint
Starting `thorax train` on a folder with a checkpoint continues it exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from thorax.errors import UserError
from training.augment import AdaptiveStrength, augment
from training.checkpoint import (
    generator_config,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    save_generator,
)
from training.config import TrainConfig, config_from_dict
from training.data import RadiographSet
from training.loss import discriminator_loss, generator_loss, gradient_penalty, mode_seeking_loss
from training.networks import Discriminator, Generator, downsample2, upsample2
from training.sample import sample_grid
from training.schedule import Phase, alpha_at, phase_at, phases


def make_generator(cfg: TrainConfig) -> Generator:
    """The generator a config describes (random weights)."""
    return Generator(
        cfg.resolution,
        cfg.latent_dim,
        len(cfg.label_names),
        cfg.channels,
        cfg.label_embedding,
        cfg.label_modulation,
        label_modulation_from=cfg.label_modulation_from,
        label_variation=cfg.label_variation,
        label_names=list(cfg.label_names),
    )


def make_discriminator(cfg: TrainConfig) -> Discriminator:
    return Discriminator(cfg.resolution, len(cfg.label_names), cfg.channels, cfg.mbstd_group, cfg.projection)


def label_row_weights(
    labels: torch.Tensor, power: float, patient_ids: list[str] | None = None
) -> torch.Tensor | None:
    """Sampling weight of each label vector: (1 / prevalence of its rarest positive label) ** power,
    divided by the number of images of the row's patient when `patient_ids` are given.

    Rows with no positive label count as the "no finding" class with its own prevalence. Per-patient
    weighting gives a patient with 61 follow-up images the weight of one, so that the generator does
    not learn one person's look. None when neither applies (draw rows uniformly, as in the data).
    """
    if patient_ids is not None:
        counts: dict[str, int] = {}
        for pid in patient_ids:
            counts[pid] = counts.get(pid, 0) + 1
        per_patient = torch.tensor([1.0 / counts[pid] for pid in patient_ids])
        base = label_row_weights(labels, power) if power > 0 else torch.ones(len(labels))
        weights = base * per_patient
        return weights / weights.sum()
    if power <= 0:
        return None
    positive = labels > 0.5  # [N, L]
    prevalence = positive.float().mean(0).clamp_min(1.0 / len(labels))  # [L]
    none_prevalence = max((~positive.any(1)).float().mean().item(), 1.0 / len(labels))
    rarest = torch.where(positive, prevalence, torch.ones_like(prevalence)).min(1).values  # [N]
    rarest = torch.where(positive.any(1), rarest, torch.full_like(rarest, none_prevalence))
    weights = rarest.pow(-power)
    return weights / weights.sum()


def cpu_computes_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic (AVX512-BF16 or AMX). Without it bf16 autocast is emulated:
    the 128 px stage trained at 4.4 images/s against 9.5 in fp32 on an Intel Xeon with AVX-512 alone, and
    at about 28 in bf16 on an AMD EPYC with AVX512-BF16."""
    try:
        capabilities = torch.cpu.get_capabilities()
    except (AttributeError, RuntimeError):  # a torch without it: keep what the config says
        return True
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the last checkpoint is still good."""


@dataclass
class RunOptions:
    run_dir: Path  # the run folder (created, or resumed when it holds a checkpoint)
    data_dir: Path  # folder with labels.csv (or NIH's Data_Entry_2017) and the PNGs
    device: str = "cpu"  # "cpu", "cuda" or "auto"
    bf16: bool | None = None  # overrides the config's bf16 autocast when set
    channels_last: bool | None = None  # overrides the config's memory format when set
    stop_kimg: float | None = None  # stop (with a checkpoint) once this many kimg have been shown
    limit_images: int | None = None  # use only the first N training images (tests)
    init_from: Path | None = None  # a run folder whose latest checkpoint starts a new run (train longer)
    log_every_s: float = 30.0  # seconds between progress lines
    grid_columns: int = 8  # fixed latents per sample grid
    quiet: bool = False


def relative_cost(cfg: TrainConfig, resolution: int) -> float:
    """Rough compute per image at a stage: 3x3 conv MACs of the levels in use, plus a fixed overhead."""
    ch = cfg.channels
    macs = sum(9 * ch[r] * ch[max(r // 2, 4)] * r * r for r in ch if r <= resolution)
    return macs + 9 * ch[4] * ch[4] * 16 * 8


def _next_multiple(images_shown: int, every_kimg: float) -> int:
    """The first multiple of `every_kimg` (in images) after `images_shown`."""
    every = max(1, round(every_kimg * 1000))
    return (images_shown // every + 1) * every


def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Trainer:
    def __init__(self, cfg: TrainConfig, opts: RunOptions) -> None:
        self.opts = opts
        self.run_dir = opts.run_dir
        self.cfg = self._resolve_config(cfg)
        cfg = self.cfg
        if opts.device == "auto":
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            if opts.device == "cuda" and not torch.cuda.is_available():
                raise UserError("--device cuda: no CUDA device is available here")
            self.device = torch.device(opts.device)
        self.bf16 = cfg.bf16 if opts.bf16 is None else opts.bf16
        self.bf16_note = ""  # why the config's bf16 is not used, for the first progress line
        if opts.bf16 is None and self.bf16 and self.device.type == "cpu" and not cpu_computes_bf16():
            self.bf16 = False
            self.bf16_note = (
                " (the config's bf16 autocast is off: this CPU has no bf16 arithmetic (avx512_bf16 or "
                "amx_bf16), where autocast trained at half fp32's speed; --bf16 forces it)"
            )
        self.channels_last = cfg.channels_last if opts.channels_last is None else opts.channels_last
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format

        self.data = RadiographSet(
            opts.data_dir,
            cfg.resolution,
            cfg.label_names,
            "train",
            cfg.split,
            cfg.seed,
            opts.limit_images,
            cfg.patient_prefixes,
        )
        self.row_weights = label_row_weights(
            self.data.labels, cfg.rare_label_power, self.data.patient_ids if cfg.patient_weighting else None
        )
        init_seed = cfg.seed if cfg.init_seed is None else cfg.init_seed
        torch.manual_seed(init_seed)  # network initialisation only; the run's own stream is `self.rng`
        self.G = make_generator(cfg).to(self.device)
        self.D = make_discriminator(cfg).to(self.device)
        self.G_ema = make_generator(cfg).to(self.device)
        self.G_ema.load_state_dict(self.G.state_dict())
        self.G_ema.requires_grad_(False).eval()
        for net in (self.G, self.D, self.G_ema):
            net.to(memory_format=self.memory_format)
        self.opt_G = self._new_optimizer(self.G)
        self.opt_D = self._new_optimizer(self.D)
        self.rng = torch.Generator().manual_seed(init_seed + 1)
        self.images_shown = 0
        self.step = 0
        self.trained_resolution = 0  # resolution whose optimiser state is current
        self.elapsed_s = 0.0
        self.data_perm = torch.randperm(len(self.data), generator=self.rng)
        self.data_pos = 0
        self.last_gp = 0.0  # the latest gradient penalty, for progress lines
        self.ada = AdaptiveStrength(
            cfg.ada_target or None, cfg.ada_speed_kimg, p_max=cfg.ada_p_max, p=cfg.augment_p
        )
        self._stop_requested = False
        self._resume_if_possible()

    # ---- setup -------------------------------------------------------------------------------
    def _resolve_config(self, cfg: TrainConfig) -> TrainConfig:
        saved = self.run_dir / "config.json"
        if saved.is_file():
            stored = json.loads(saved.read_text())
            if stored["name"] != cfg.name:
                raise UserError(
                    f"{self.run_dir} holds a run of config {stored['name']!r}, not {cfg.name!r}; "
                    "use another --run-dir"
                )
            return config_from_dict(stored, str(saved))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(cfg.to_dict(), indent=1))
        return cfg

    def _new_optimizer(self, net: torch.nn.Module) -> torch.optim.Adam:
        return torch.optim.Adam(
            net.parameters(), lr=self.cfg.lr, betas=(self.cfg.beta1, self.cfg.beta2), eps=1e-8
        )

    def _resume_if_possible(self) -> None:
        path = latest_checkpoint(self.run_dir)
        if path is None and self.opts.init_from is not None:
            path = self._start_from(Path(self.opts.init_from))
        if path is None:
            self.data.write_split(self.run_dir / "split.json")
            return
        meta, extra = load_checkpoint(
            path, {"G": self.G, "D": self.D, "G_ema": self.G_ema}, {"opt_G": self.opt_G, "opt_D": self.opt_D}
        )
        self.images_shown = meta["images_shown"]
        self.step = meta["step"]
        self.trained_resolution = meta["trained_resolution"]
        self.elapsed_s = meta["elapsed_s"]
        self.data_pos = meta["data_pos"]
        if "augment" in meta:
            self.ada.load_state(meta["augment"])
        self.rng.set_state(extra["rng"])
        self.data_perm = extra["data_perm"]
        if len(self.data_perm) != len(self.data):
            raise UserError(
                f"{path}: the data has {len(self.data)} training images, the run had {len(self.data_perm)}"
            )
        self._log(f"resuming {self.cfg.name} at kimg {self.images_shown / 1000:.1f} from {path.name}")

    def _start_from(self, other: Path) -> Path:
        """The latest checkpoint of another run, to continue under this run's config (a longer schedule,
        for example). Its networks must be this config's; its patient split must be this run's."""
        path = latest_checkpoint(other)
        if path is None:
            raise UserError(f"--init-from {other}: no checkpoint there (checkpoints/latest.json)")
        theirs = json.loads((other / "config.json").read_text()) if (other / "config.json").is_file() else {}
        mine = json.loads(json.dumps(self.cfg.to_dict()))  # lists, as in the other run's config.json
        differ = [k for k in ("resolution", "latent_dim", "split", "seed", "patient_prefixes", "label_names")
                  if k in theirs and k in mine and theirs[k] != mine[k]]  # fmt: skip
        width = {s["resolution"]: s["channels"] for s in theirs.get("stages", [])}
        if any(width.get(s["resolution"], s["channels"]) != s["channels"] for s in mine["stages"]):
            differ.append("the channels of a stage")
        if differ:
            differ_text = ", ".join(differ)
            raise UserError(f"--init-from {other}: that run differs from {self.cfg.name!r} in {differ_text}")
        self.data.write_split(self.run_dir / "split.json")
        self._log(f"{self.cfg.name}: starting from {other}'s checkpoint {path.name}")
        return path

    # ---- one step ----------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def _next_indices(self, batch: int) -> torch.Tensor:
        if self.row_weights is not None:  # rare labels over-represented
            return torch.multinomial(self.row_weights, batch, replacement=True, generator=self.rng)
        if self.data_pos + batch > len(self.data_perm):
            self.data_perm = torch.randperm(len(self.data), generator=self.rng)
            self.data_pos = 0
        if batch > len(self.data_perm):  # tiny data sets in tests
            return torch.randint(len(self.data), (batch,), generator=self.rng)
        idx = self.data_perm[self.data_pos : self.data_pos + batch]
        self.data_pos += batch
        return idx

    def _fake_labels(self, batch: int) -> torch.Tensor:
        """Fake conditions are real label vectors of the training set, so their mix is realistic (drawn
        with the same weights as the real images when rare labels are over-represented)."""
        if self.row_weights is not None:
            rows = torch.multinomial(self.row_weights, batch, replacement=True, generator=self.rng)
        else:
            rows = torch.randint(len(self.data), (batch,), generator=self.rng)
        return self.data.labels[rows].to(self.device)

    def _reals(self, phase: Phase, alpha: float, idx: torch.Tensor) -> torch.Tensor:
        x = self.data.images_at(phase.resolution)[idx].to(self.device)  # [B, 1, R, R]
        if alpha < 1.0:  # during a fade-in the reals blend from the previous resolution like the fakes
            x = torch.lerp(upsample2(downsample2(x)), x, alpha)
        return x.contiguous(memory_format=self.memory_format)

    def _critic(
        self, images: torch.Tensor, labels: torch.Tensor, level: int, alpha: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The critic on augmented images (the same augmentation for reals and fakes)."""
        images = augment(images, self.ada.p, self.rng)
        return self.D(images.contiguous(memory_format=self.memory_format), level, alpha, labels)

    def train_step(self, phase: Phase) -> dict[str, float]:
        cfg, batch, level = self.cfg, phase.batch, phase.level
        alpha = alpha_at(phase, self.images_shown)
        gain = cfg.cond_gain(self.images_shown)
        for net in (self.G, self.D, self.G_ema):
            net.cond_gain = gain
        idx = self._next_indices(batch)
        reals = self._reals(phase, alpha, idx)
        real_labels = self.data.labels[idx].to(self.device)

        # Critic.
        self.D.requires_grad_(True)
        z = torch.randn(batch, cfg.latent_dim, generator=self.rng).to(self.device)
        fake_labels = self._fake_labels(batch)
        with torch.no_grad(), self._autocast():
            fakes = self.G(z, fake_labels, level, alpha)
        fakes = fakes.float().contiguous(memory_format=self.memory_format)
        reals_aug = augment(reals, self.ada.p, self.rng).contiguous(memory_format=self.memory_format)
        fakes_aug = augment(fakes, self.ada.p, self.rng).contiguous(memory_format=self.memory_format)
        with self._autocast():
            real_score, real_logits = self.D(reals_aug, level, alpha, real_labels)
            fake_score, fake_logits = self.D(fakes_aug, level, alpha, fake_labels)
        d = discriminator_loss(
            real_score,
            fake_score,
            real_logits,
            fake_logits,
            real_labels,
            fake_labels,
            cfg.drift,
            cfg.label_weight,
            cfg.label_loss_fakes,
        )
        d_total = d["total"]
        if self.step % cfg.gp_every == 0:
            gp = gradient_penalty(
                self.D, reals_aug, fakes_aug, level, alpha, self.rng, real_labels, fake_labels
            )
            d_total = d_total + cfg.gp_lambda * cfg.gp_every * gp
            self.last_gp = gp.item()
        self.opt_D.zero_grad(set_to_none=True)
        d_total.backward()
        self.opt_D.step()
        self.ada.update(real_score.detach(), fake_score.detach())

        # Generator.
        self.D.requires_grad_(False)
        z = torch.randn(batch, cfg.latent_dim, generator=self.rng).to(self.device)
        if cfg.diversity_weight:  # pairs that share a label vector, for the mode-seeking term
            fake_labels = self._fake_labels(batch // 2).repeat(2, 1)
        else:
            fake_labels = self._fake_labels(batch)
        with self._autocast():
            fakes = self.G(z, fake_labels, level, alpha)
            fake_score, fake_logits = self._critic(fakes, fake_labels, level, alpha)
        g = generator_loss(fake_score, fake_logits, fake_labels, cfg.label_weight)
        diversity = torch.zeros(())
        if cfg.diversity_weight:
            diversity = mode_seeking_loss(fakes, z)
            g["total"] = g["total"] + cfg.diversity_weight * diversity
        label_kl = torch.zeros(())
        if cfg.label_variation_kl:
            label_kl = self.G.label_kl(fake_labels)
            g["total"] = g["total"] + cfg.label_variation_kl * label_kl
        self.opt_G.zero_grad(set_to_none=True)
        g["total"].backward()
        self.opt_G.step()

        self._update_ema()
        self.images_shown += batch
        self.step += 1
        stats = {
            "loss_D": d_total.item(),
            "wasserstein": d["wasserstein"].item(),
            "gp": self.last_gp,  # from the latest step that computed the penalty
            "label_D": d["label"].item(),
            "loss_G": g["total"].item(),
            "label_G": g["label"].item(),
            "diversity": diversity.item(),
            "label_kl": label_kl.item(),
            "augment_p": self.ada.p,
            "rt": self.ada.rt,
            "cond_gain": gain,
        }
        if not all(math.isfinite(v) for v in stats.values()):
            raise TrainingDiverged(
                f"a loss became non-finite at kimg {self.images_shown / 1000:.1f} ({stats}); "
                "the last checkpoint is intact: resume from it with a lower lr or bf16 off"
            )
        return stats

    @torch.no_grad()
    def _update_ema(self) -> None:
        beta = self.cfg.ema_beta
        if self.cfg.ema_rampup:  # early on, follow the generator closely instead of its random init
            beta = min(beta, (1 + self.step) / (10 + self.step))
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters(), strict=True):
            p_ema.lerp_(p, 1.0 - beta)

    # ---- outputs -----------------------------------------------------------------------------
    def _log(self, text: str, record: dict | None = None) -> None:
        if not self.opts.quiet:
            print(text, flush=True)
        if record is not None:
            with open(self.run_dir / "log.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")

    def write_samples(self, phase: Phase) -> Path:
        alpha = alpha_at(phase, self.images_shown)
        display = min(self.cfg.resolution, 64)
        grid = sample_grid(self.G_ema, self.cfg.seed, self.opts.grid_columns, phase.level, alpha, display)
        out = self.run_dir / "samples" / f"{phase.name}-kimg{self.images_shown / 1000:07.1f}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        grid.save(out)
        grid.save(self.run_dir / "samples" / "latest.png")
        return out

    def save(self) -> Path:
        state = {
            "config": self.cfg.name,
            "images_shown": self.images_shown,
            "kimg": self.images_shown / 1000,
            "step": self.step,
            "trained_resolution": self.trained_resolution,
            "elapsed_s": self.elapsed_s,
            "data_pos": self.data_pos,
            "augment": self.ada.state(),
            "bf16": self.bf16,
            "torch": torch.__version__,
        }
        path = save_checkpoint(
            self.run_dir,
            {"G": self.G, "D": self.D, "G_ema": self.G_ema},
            {"opt_G": self.opt_G, "opt_D": self.opt_D},
            {"rng": self.rng.get_state(), "data_perm": self.data_perm},
            state,
            keep=self.cfg.keep_checkpoints,
        )
        self.export_generator(self.run_dir / "generator")
        return path

    def export_generator(self, out_dir: Path) -> None:
        """The averaged generator alone, at the resolution reached so far, with its provenance."""
        G = self.G_ema.to(memory_format=torch.contiguous_format)
        config = generator_config(G, self.cfg.label_names, self.cfg.channels, self.cfg)
        phase = phase_at(self.cfg, self.images_shown)
        extra = {
            "training": {
                "config": self.cfg.to_dict(),
                "kimg": self.images_shown / 1000,
                "total_kimg": self.cfg.total_kimg,
                "complete": phase is None,
                "reached_resolution": phase.resolution if phase else self.cfg.resolution,
                "train_images": len(self.data),
                "label_prevalence": self.data.label_prevalence(),
                "label_table": str(self.data.label_table_path),
                "elapsed_s": round(self.elapsed_s, 1),
            }
        }
        save_generator(out_dir, G, config, extra)
        G.to(memory_format=self.memory_format)

    # ---- the loop ----------------------------------------------------------------------------
    def _eta(self, phase: Phase, rate: float) -> tuple[float, float]:
        """Seconds left in this phase and in the run, scaling today's speed by each stage's cost."""
        if rate <= 0:
            return math.inf, math.inf
        phase_left = (phase.end_img - self.images_shown) / rate
        cost_now = relative_cost(self.cfg, phase.resolution)
        run_left = phase_left
        for later in phases(self.cfg):
            if later.start_img >= phase.end_img:
                run_left += later.length_img / rate * relative_cost(self.cfg, later.resolution) / cost_now
        return phase_left, run_left

    def _request_stop(self, signum: int, _frame: object) -> None:
        self._stop_requested = True

    def run(self) -> Path | None:
        """Train until the schedule (or `stop_kimg`) is done; returns the last checkpoint's path."""
        cfg, opts = self.cfg, self.opts
        previous_handler = signal.signal(signal.SIGTERM, self._request_stop)
        stop_img = math.inf if opts.stop_kimg is None else round(opts.stop_kimg * 1000)
        next_ckpt = _next_multiple(self.images_shown, cfg.checkpoint_every_kimg)
        next_sample = _next_multiple(self.images_shown, cfg.sample_every_kimg)
        window_start, window_img, last_log = time.monotonic(), self.images_shown, 0.0
        last_path = latest_checkpoint(self.run_dir)
        self._log(
            f"{cfg.name}: {len(self.data)} training images, {cfg.resolution} px, {cfg.total_kimg:g} kimg, "
            f"device {self.device}, bf16 {self.bf16}{self.bf16_note}, channels_last {self.channels_last}"
        )
        try:
            while True:
                phase = phase_at(cfg, self.images_shown)
                if phase is None or self.images_shown >= stop_img or self._stop_requested:
                    break
                if phase.resolution != self.trained_resolution:
                    if cfg.reset_optimizer_each_stage and self.trained_resolution:
                        self.opt_G, self.opt_D = self._new_optimizer(self.G), self._new_optimizer(self.D)
                    self.trained_resolution = phase.resolution
                t0 = time.monotonic()
                stats = self.train_step(phase)
                self.elapsed_s += time.monotonic() - t0
                phase_done = self.images_shown >= phase.end_img
                now = time.monotonic()
                if now - last_log >= opts.log_every_s or phase_done:
                    rate = (self.images_shown - window_img) / max(now - window_start, 1e-9)
                    phase_left, run_left = self._eta(phase, rate)
                    alpha = alpha_at(phase, self.images_shown)
                    kl = f" kl {stats['label_kl']:.3f}" if cfg.label_variation_kl else ""
                    self._log(
                        f"{phase.resolution:4d}px {phase.kind:6s} a={alpha:.2f} "
                        f"kimg {self.images_shown / 1000:7.1f}/{cfg.total_kimg:g}  "
                        f"D {stats['loss_D']:+.3f} (W {stats['wasserstein']:+.3f} gp {stats['gp']:.3f} "
                        f"lab {stats['label_D']:.3f})  G {stats['loss_G']:+.3f} "
                        f"(ms {stats['diversity']:.2f}{kl})  "
                        f"aug {stats['augment_p']:.2f} rt {stats['rt']:+.2f} cond {stats['cond_gain']:.2f}  "
                        f"{rate:6.1f} img/s  "
                        f"phase left {_fmt_duration(phase_left)}  run left {_fmt_duration(run_left)}",
                        {
                            "kimg": self.images_shown / 1000,
                            "resolution": phase.resolution,
                            "phase": phase.kind,
                            "alpha": alpha,
                            "img_per_s": rate,
                            "elapsed_s": round(self.elapsed_s, 1),
                            **stats,
                        },
                    )
                    window_start, window_img, last_log = now, self.images_shown, now
                if phase_done or self.images_shown >= next_sample:
                    self.write_samples(phase)
                    next_sample = _next_multiple(self.images_shown, cfg.sample_every_kimg)
                if phase_done or self.images_shown >= next_ckpt:
                    last_path = self.save()
                    next_ckpt = _next_multiple(self.images_shown, cfg.checkpoint_every_kimg)
        except KeyboardInterrupt:
            self._stop_requested = True
        finally:
            signal.signal(signal.SIGTERM, previous_handler)
        if last_path is None or json.loads(last_path.read_text())["images_shown"] != self.images_shown:
            last_path = self.save()
        done = phase_at(cfg, self.images_shown) is None
        self._log(
            f"{'finished' if done else 'stopped'} at kimg {self.images_shown / 1000:.1f}; "
            f"checkpoint {last_path}; generator in {self.run_dir / 'generator'}"
        )
        return last_path


def train(cfg: TrainConfig, opts: RunOptions) -> Path | None:
    """Train (or resume) a run; see the module docstring for what the run folder holds."""
    return Trainer(cfg, opts).run()
