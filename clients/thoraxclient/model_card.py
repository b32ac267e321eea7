"""The model card: what a generator is, what it learned from, and how to sample label vectors for it.

`model_card.json` in every `model_store/<name>/<version>/` validates against `ModelCard`. The gateway
serves it (`GET /v1/models/{name}`) and this SDK reads it: it is part of the wire format.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

CARD_SCHEMA_VERSION = "1"
# the all-zero label vector, as the data's label table names it; the key of a per-label spread for the
# images without a label (training.networks has the twin: it travels alone in the TorchServe archive)
NO_FINDING = "No_Finding"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Labels(_Strict):
    names: list[str] = Field(min_length=1, description="label names in the order of the model's label input")
    encoding: str = Field(description="how a label is encoded, e.g. continuous 0..1, all zeros = no finding")


class StageSummary(_Strict):
    resolution: int
    channels: int
    batch: int
    fade_kimg: float
    stable_kimg: float


class Architecture(_Strict):
    family: str  # "conditional progressive-growing GAN (PGGAN), generator only"
    resolution: int
    latent_dim: int
    parameters: int
    channels: dict[str, int]
    stages: list[StageSummary]
    kimg: float = Field(description="thousands of real images shown to the discriminator")
    total_kimg: float
    complete: bool = Field(description="whether the run reached the end of its schedule")
    loss: str
    ema_beta: float
    precision: str
    conditioning: str | None = Field(
        default=None, description="how the labels reach the generator and the critic (older cards: none)"
    )
    label_guidance: float | dict[str, float] = Field(
        default=1.0,
        description="how far past its trained effect each label is drawn: 1.0 as trained, 2.0 twice "
        "the change from no finding; or per place ('input': the labels beside the latent, '16': the "
        "modulations of the 16 px block, '*': every place not named, else as trained), and per label "
        "(e.g. 'Pneumonia': 1.0, the strength for images with that label) (older cards: 1.0)",
    )
    label_variation_scale: float | dict[str, float] = Field(
        default=1.0,
        description="with conditioning augmentation, the spread of the drawn label embedding against the "
        "trained one: 1.0 as trained, above 1 more variety within a label; or per label (e.g. "
        "{'Edema': 2.0}; 'No_Finding': the images without a label), the labels not named as trained "
        "(older cards: 1.0)",
    )

    @field_validator("label_variation_scale")
    @classmethod
    def _spread_above_zero(cls, v: float | dict[str, float]) -> float | dict[str, float]:
        if any(x <= 0 for x in (v.values() if isinstance(v, dict) else [v])):
            raise ValueError("a label variation scale must be above 0")
        return v

    def label_variation_text(self) -> str:
        """The spread in words: "1.2", or "Cardiomegaly 1.5, Edema 2" for one given per label."""
        return describe_label_variation_scale(self.label_variation_scale)

    def label_guidance_text(self) -> str:
        """The guidance in words: "1.5", or "16 px 2.5, 32 px 1.5" for one given per place."""
        return describe_label_guidance(self.label_guidance)

    def is_guided(self) -> bool:
        return is_label_guided(self.label_guidance)


def is_label_guided(guidance: float | dict[str, float]) -> bool:
    """Whether a label guidance draws any place other than as trained."""
    return any(v != 1.0 for v in guidance.values()) if isinstance(guidance, dict) else guidance != 1.0


def describe_label_variation_scale(scale: float | dict[str, float]) -> str:
    """A label variation scale in words: "1.2", or per label "Cardiomegaly 1.5, Edema 2" (the others: 1).
    The twin of training.networks' (which travels alone in the TorchServe archive)."""
    if isinstance(scale, dict):
        return ", ".join(f"{k} {v:g}" for k, v in scale.items())
    return f"{scale:g}"


def is_guidance_place(key: str) -> bool:
    """Whether a key of a label guidance mapping is a place ("input" or a block side), not "*" (every place
    not named) or a label name. The twin of training.networks' (which travels alone in the archive)."""
    return key == "input" or key.isdigit()


def guidance_own_labels(guidance: float | dict[str, float]) -> list[str]:
    """The labels a label guidance gives a strength of their own (none for a number)."""
    if not isinstance(guidance, dict):
        return []
    return [k for k in guidance if not is_guidance_place(k) and k != "*"]


def describe_label_guidance(guidance: float | dict[str, float]) -> str:
    """A label guidance in words: "1.5"; per place "input 2, 16 px 2.5" (the places not named: 1); with
    "*" (every other place) "16 px 2.5, elsewhere 2", or "2" alone; with labels of their own strength
    "2, Pneumonia 1"."""
    if not isinstance(guidance, dict):
        return f"{guidance:g}"
    places = any(is_guidance_place(k) for k in guidance)
    parts = []
    for k, v in guidance.items():
        if k == "input":
            parts.append(f"input {v:g}")
        elif k.isdigit():
            parts.append(f"{k} px {v:g}")
        elif k == "*":
            parts.append(f"elsewhere {v:g}" if places else f"{v:g}")
        else:
            parts.append(f"{k} {v:g}")
    return ", ".join(parts)


class DataSource(_Strict):
    name: str
    images: int
    licence: str
    attribution: str


class TrainingData(_Strict):
    description: str
    sources: list[DataSource]
    images_total: int
    train_images: int
    train_patients: int
    split: str
    label_counts: dict[str, int] = Field(description="positive training images per label")
    no_finding_images: int
    caveats: list[str]
    cohort: str | None = Field(
        default=None, description="the one cohort trained on (e.g. NIH adults); none = every patient"
    )


class LabelPrior(_Strict):
    """The training set's label distribution, so that realistic label vectors can be sampled."""

    frequency: dict[str, float] = Field(description="fraction of training images positive for each label")
    cooccurrence: list[list[float]] = Field(
        description="fraction of training images positive for both labels i and j (diagonal = frequency)"
    )
    patterns: list[dict] = Field(
        description="each distinct label combination of the training set, as {labels: [...], count: n}"
    )


class Onnx(_Strict):
    file: str
    opset: int
    inputs: dict[str, list]
    outputs: dict[str, list]


class ModelCard(_Strict):
    schema_version: str = CARD_SCHEMA_VERSION
    name: str
    version: str
    created: datetime
    git_commit: str
    software: dict[str, str]
    architecture: Architecture
    labels: Labels
    training_data: TrainingData
    label_prior: LabelPrior
    onnx: Onnx
    files: dict[str, str] = Field(description="role -> file name in the model folder")
    intended_use: str
    not_for: list[str]
    privacy: str
    limitations: list[str]
    evaluation: dict | None = Field(default=None, description="filled by `thorax evaluate`")

    @model_validator(mode="after")
    def _labels_agree(self) -> ModelCard:
        names = self.labels.names
        if len(set(names)) != len(names):
            raise ValueError("label names must be unique")
        for what, keys in (
            ("label_prior.frequency", self.label_prior.frequency),
            ("training_data.label_counts", self.training_data.label_counts),
        ):
            if list(keys) != names:
                raise ValueError(f"{what} must name the labels in the model's order")
        matrix = self.label_prior.cooccurrence
        if len(matrix) != len(names) or any(len(row) != len(names) for row in matrix):
            raise ValueError("label_prior.cooccurrence must be a square matrix over the labels")
        return self
