"""The gateway's wire schemas: the single definition of what `POST /generate` accepts and what the job,
manifest, preview and visualize routes answer. The gateway validates with these models and the SDK reads
with them.

Pydantic and the standard library only, so that the SDK installs without the service's dependencies.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
ImageFormat = Literal["png", "dicom"]
TERMINAL_STATES: tuple[str, ...] = ("succeeded", "failed", "cancelled")
SEED_LIMIT = 2**63  # seeds are 0 <= seed < 2**63 so that they survive JSON readers with int64


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Strict like JSON: a label value is a number (not true, not "1"), a count an integer (not "5", not 5.0).
LabelValue = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False, strict=True)]
LabelName = Annotated[str, Field(min_length=1)]
StrictCount = Annotated[int, Field(strict=True)]
# A job's destination as the gateway takes it: folders of 1 to 100 letters, digits and . _ = -, joined by
# "/". The gateway also refuses the segments "." and "..", and segments that look like a job id.
PREFIX_PATTERN = r"^([A-Za-z0-9._=-]{1,100}(/[A-Za-z0-9._=-]{1,100})*/?)?$"

# A label vector in the model's order, or label names mapped to values (the others are 0).
LabelVector = list[LabelValue] | dict[LabelName, LabelValue]


class LabelPrior(_Strict):
    """Labels sampled per image from the model card's label prior (its training-set label patterns),
    with the `fixed` labels set to the given values on every image."""

    prior: Literal["model"] = Field(description="where the other labels come from: the model card's prior")
    fixed: dict[LabelName, LabelValue] = Field(
        default_factory=dict, description="label name -> value on every image"
    )


class JobRequest(_Strict):
    """`POST /generate` (and `POST /v1/jobs`): N radiographs written as WebDataset shards."""

    model: str | None = Field(default=None, description="NAME or NAME/VERSION; the default model if omitted")
    count: StrictCount = Field(ge=1, description="number of images")
    resolution: StrictCount | None = Field(
        default=None, ge=4, description="pixels per side: the model's, or lower (area downsampling)"
    )
    labels: LabelVector | list[LabelVector] | LabelPrior | None = Field(
        default=None,
        description=(
            "one label vector for every image (a list of the model's label count, or a mapping of label "
            "names to values in 0..1), a list with one vector per image, or a prior; all zeros if omitted"
        ),
    )
    seed: StrictCount | None = Field(
        default=None, ge=0, lt=SEED_LIMIT, description="chosen and recorded if omitted"
    )
    format: ImageFormat = "png"
    shard_size: StrictCount = Field(default=1000, ge=1, description="images per tar shard")
    prefix: str = Field(
        default="",
        max_length=256,
        pattern=PREFIX_PATTERN,
        description="destination folder under the gateway's storage prefix",
    )


class JobSpec(_Strict):
    """What a job is, resolved and recorded in `job.json`: the shards are a pure function of this spec
    (the job id and the destination aside) and the shard index."""

    job_id: str
    model_name: str
    model_version: str
    model_card_sha256: str
    resolution: int
    native_resolution: int
    count: int
    seed: int
    format: ImageFormat
    shard_size: int
    prefix: str
    label_names: list[str]
    label_vector: list[float] | None = Field(default=None, description="the same labels on every image")
    label_rows: list[list[float]] | None = Field(default=None, description="one label vector per image")
    label_prior_fixed: dict[str, float] | None = Field(
        default=None, description="labels sampled from the prior, these fixed"
    )
    created: datetime
    owner: str | None = Field(
        default=None, description="the id of the API key that submitted it (a hash, never the key)"
    )
    # What makes the pixels: its shards are always made with these, so that the same spec gives the same
    # bytes (None in jobs made before they were recorded: onnxruntime, fp32).
    backend: str | None = Field(
        default=None,
        description="the generator's backend: onnxruntime, onnxruntime-cuda, openvino, torchserve",
    )
    precision: str | None = Field(default=None, description="the backend's arithmetic: fp32 or bf16")

    @property
    def shards_total(self) -> int:
        return -(-self.count // self.shard_size)


class JobStatus(_Strict):
    id: str
    url: str
    state: JobState
    model: str = Field(description="NAME/VERSION")
    count: int
    images_made: int | None = Field(
        default=None,
        description=(
            "images through the encoder, in committed shards or in the shards still being written "
            "(absent from gateways before it was added)"
        ),
    )
    images_done: int = Field(description="images in committed shards: in storage and readable")
    shards_done: int
    shards_total: int
    images_per_second: float | None = None
    seconds_left: float | None = None
    seed: int
    format: ImageFormat
    location: str = Field(description="where the shards go: <storage>/<prefix>/<job id>/")
    manifest_url: str | None = None
    error: str | None = None
    created: datetime


class JobList(_Strict):
    jobs: list[JobStatus]


class ShardEntry(_Strict):
    name: str
    sha256: str
    bytes: int
    images: int
    first_index: int
    label_counts: dict[str, int] = Field(description="images per label with a value >= 0.5")
    url: str | None = Field(
        default=None,
        description=(
            "where a client reads the shard without storage credentials: a presigned GET URL (S3) or the "
            "gateway's shard route (local folder); only in answers, never in the stored manifest"
        ),
    )


class ShardList(_Strict):
    """`GET /v1/jobs/{id}/shards`: the shards committed so far, with URLs; readable while the job runs."""

    job_id: str
    state: JobState
    shards_total: int
    shards: list[ShardEntry]


class ManifestModel(_Strict):
    name: str
    version: str
    card_sha256: str


class Manifest(_Strict):
    """`manifest.json`, written last: every shard with its checksum, image count and label counts."""

    job_id: str
    model: ManifestModel
    spec: JobSpec
    images: int
    shards: list[ShardEntry]
    label_counts: dict[str, int]


class PreviewRequest(_Strict):
    """`POST /v1/preview`: a small PNG grid, answered synchronously."""

    model: str | None = None
    count: StrictCount = Field(
        default=4, ge=1, description="images in the grid (at most the gateway's limit)"
    )
    seed: StrictCount = Field(default=0, ge=0, lt=SEED_LIMIT)
    labels: LabelVector | list[LabelVector] | LabelPrior | None = None
    resolution: StrictCount | None = Field(default=None, ge=4)


TRANSITION_VALUES: tuple[float, ...] = (0.0, 0.3, 0.6, 1.0)  # the paper's Figure 5


class VisualizeRequest(_Strict):
    """`POST /v1/visualize`: the paper's pictures of one latent (image 0 of `seed`) as a PNG, a row per label.

    `transitions` (Figure 5): the label alone going through `values`, left to right (greyscale).
    `difference` (Figure 6): healthy (all labels 0) | diseased (the label alone at `value`) | the difference
    over the healthy image, red where the diseased image is brighter and blue where darker (RGB).
    Name one label with `label` or several with `labels`; names match in any case, spaces for underscores.
    """

    model: str | None = None
    kind: Literal["transitions", "difference"]
    label: str | None = Field(default=None, description="one label name; or give `labels`")
    labels: list[str] | None = Field(default=None, min_length=1, description="label names, a row each")
    values: list[LabelValue] | None = Field(
        default=None, min_length=1, description="transitions only: the label's values; default 0, .3, .6, 1"
    )
    value: LabelValue | None = Field(
        default=None, description="difference only: the diseased value; default 1"
    )
    seed: int = Field(default=0, ge=0, lt=SEED_LIMIT)
    resolution: int | None = Field(default=None, ge=4, description="tile size; at most the model's")


class ModelSummary(_Strict):
    name: str
    version: str
    ref: str
    resolution: int
    latent_dim: int
    labels: list[str]
    default: bool
    card_sha256: str


class ModelList(_Strict):
    models: list[ModelSummary]


class ModelFigures(_Strict):
    """`GET /v1/models/{name}/{version}/files`: the model's figures (samples, evaluation pictures)."""

    figures: list[str] = Field(description="file names, each read from .../files/{name}")


class Problem(BaseModel):
    """RFC 9457 problem details, as every error of the gateway is answered."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    request_id: str | None = None
    errors: list[dict] | None = Field(default=None, description="for validation errors: field and message")


class JobEstimate(_Strict):
    """`POST /v1/jobs?dry_run=true`: what a job would make and cost, from a trial batch generated and
    encoded on the gateway; nothing is started or stored. A request that a submission would refuse gets
    the same error."""

    dry_run: Literal[True] = True
    model: str = Field(description="NAME/VERSION")
    count: int
    resolution: int
    format: ImageFormat
    shard_size: int
    shards_total: int
    bytes: int = Field(description="the shards' total size, estimated from the trial's samples")
    bytes_per_image: float = Field(
        description="one sample in a shard: the image and its JSON, as tar members"
    )
    images_per_second: float = Field(description="the trial's rate: inference and encoding, not overlapped")
    seconds: float = Field(description="count / images_per_second: an upper bound at the gateway's load")
    measured_with: str


# ---- reader studies: telling generated radiographs from real ones (the paper's Table 1) -------------

StudyAnswer = Literal["generated", "real"]
StudyText = Annotated[str, Field(min_length=1, max_length=100)]


class StudyReaderRequest(_Strict):
    name: StudyText
    group: StudyText = Field(default="readers", description="readers are also scored as groups")


class StudyRequest(_Strict):
    """`POST /v1/studies`: a blinded reader study. Each resolution block shows `per_block` real
    radiographs from the gateway's study folder (`THORAX_STUDY_IMAGES`) and `per_block` generated ones
    in a seeded random order; the blocks run in increasing resolution; every image is shown once."""

    name: Annotated[str, Field(min_length=1, max_length=200)]
    model: str | None = Field(default=None, description="NAME or NAME/VERSION; the default model if omitted")
    resolutions: list[Annotated[int, Field(strict=True, ge=4)]] = Field(
        min_length=1, max_length=8, description="one block per resolution, at most the model's"
    )
    per_block: StrictCount = Field(ge=1, le=500, description="real images per block (as many generated)")
    seconds_per_image: Annotated[float, Field(strict=True, gt=0, le=3600, allow_inf_nan=False)] = 30.0
    readers: list[StudyReaderRequest] = Field(min_length=1, max_length=100)
    seed: StrictCount | None = Field(default=None, ge=0, lt=SEED_LIMIT, description="chosen if omitted")
    labels: LabelVector | LabelPrior | None = Field(
        default=None, description="labels of the generated images; the model card's prior if omitted"
    )


class StudyReader(_Strict):
    id: str
    name: str
    group: str
    answered: int = Field(description="images answered or timed out so far")
    token: str | None = Field(
        default=None, description="the reader's secret: only in the answer that creates it"
    )
    url: str | None = Field(default=None, description="the reader's link: only in the answer that creates it")


class Study(_Strict):
    id: str
    url: str
    name: str
    model: str = Field(description="NAME/VERSION")
    created: datetime
    seed: int
    resolutions: list[int] = Field(description="the blocks, in the order they are shown")
    per_block: int
    images_per_reader: int
    seconds_per_image: float
    readers: list[StudyReader]


class StudyList(_Strict):
    studies: list[Study]


class ReaderState(_Strict):
    """What a reader sees next (`GET /v1/read/{token}`); nothing in it tells real from generated."""

    study: str
    reader: str
    position: int = Field(description="0-based; the images before it are answered and closed")
    images_total: int
    block: int
    blocks: int
    resolution: int | None = Field(description="the current block's; None when done")
    seconds_per_image: float
    seconds_left: float | None = Field(description="once the current image is shown: the time it has left")
    image: str | None = Field(description="the current image's random name; None when done")
    image_url: str | None
    done: bool


class ReaderAnswer(_Strict):
    """`POST /v1/read/{token}/answers`: the answer to the current image; null when the time ran out."""

    position: StrictCount = Field(ge=0)
    image: Annotated[str, Field(min_length=1, max_length=64)]
    answer: StudyAnswer | None


class StudyResultRow(_Strict):
    """One reader's or one group's scores over one block (`resolution`) or every block (None).
    Positive = generated; an image left unanswered counts as wrong. A group's accuracy, sensitivity and
    specificity are its readers' means (with the standard error among them for accuracy); kappa is
    Fleiss' across its readers over the images that all of them answered."""

    kind: Literal["reader", "group"]
    name: str
    group: str
    resolution: int | None
    readers: int
    images: int = Field(description="images reached (answered or timed out); a group's: its readers' sum")
    answered: int = Field(description="images answered in time; a group's: its readers' sum")
    accuracy: float | None
    accuracy_se: float | None = None
    sensitivity: float | None
    specificity: float | None
    kappa: float | None = None
    kappa_images: int | None = None


class StudyResults(_Strict):
    study: Study
    rows: list[StudyResultRow]
