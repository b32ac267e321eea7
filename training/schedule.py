"""The progressive schedule: which resolution is trained, and how far it has faded in, after a given
number of real images has been shown."""

from __future__ import annotations

from dataclasses import dataclass

from training.config import TrainConfig
from training.networks import level_of


@dataclass(frozen=True)
class Phase:
    resolution: int
    kind: str  # "fade" (the new resolution is blended in) or "stable"
    start_img: int  # images shown when the phase begins
    length_img: int  # images shown during the phase
    batch: int

    @property
    def level(self) -> int:
        return level_of(self.resolution)

    @property
    def end_img(self) -> int:
        return self.start_img + self.length_img

    @property
    def name(self) -> str:
        return f"{self.resolution:03d}-{self.kind}"


def phases(cfg: TrainConfig) -> list[Phase]:
    """Every phase of the run in order, skipping phases of zero length."""
    out: list[Phase] = []
    start = 0
    for stage in cfg.stages:
        for kind, kimg in (("fade", stage.fade_kimg), ("stable", stage.stable_kimg)):
            length = round(kimg * 1000)
            if length > 0:
                out.append(Phase(stage.resolution, kind, start, length, stage.batch))
                start += length
    return out


def phase_at(cfg: TrainConfig, images_shown: int) -> Phase | None:
    """The phase in progress after ``images_shown`` images; None once the schedule is complete."""
    for phase in phases(cfg):
        if images_shown < phase.end_img:
            return phase
    return None


def alpha_at(phase: Phase, images_shown: int) -> float:
    """Fade-in weight of the newest resolution: rises linearly 0 -> 1 in a fade phase, else 1."""
    if phase.kind != "fade":
        return 1.0
    return min(1.0, max(0.0, (images_shown - phase.start_img) / phase.length_img))
