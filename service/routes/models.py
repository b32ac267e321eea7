"""Models: `GET /v1/models`, `GET /v1/models/{name}` (the model card), `POST /v1/preview` (a PNG grid),
`POST /v1/visualize` (the paper's transition strips and difference maps as a PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from fastapi import APIRouter, Depends, Response
from thoraxclient.model_card import ModelCard
from thoraxclient.schemas import (
    TRANSITION_VALUES,
    ModelFigures,
    ModelList,
    ModelSummary,
    PreviewRequest,
    Problem,
    VisualizeRequest,
)

from service import deps
from service import labels as label_rules
from service.backends import BackendError
from service.catalog import Catalog, LoadedModel
from service.imaging import downsample, grid_png, png_bytes
from service.jobs import resolve_resolution
from service.problems import ApiProblem, FieldProblem, LimitProblem
from thorax.pictures import difference_row, tile_grid
from thorax.store import SUMS, StoredModel, StoreError, find_model, sha256_file

router = APIRouter(tags=["models"], dependencies=[Depends(deps.require_api_key)])
_ERRORS = {
    code: {"model": Problem, "content": {"application/problem+json": {}}} for code in (401, 404, 422, 429)
}


@router.get("/v1/models", response_model=ModelList, responses=_ERRORS)
def list_models(catalog: deps.CatalogDep) -> ModelList:
    try:
        default = catalog.default_ref()
    except StoreError:
        default = None
    out = []
    for model in catalog.available():
        card = model.card()
        out.append(
            ModelSummary(
                name=model.name,
                version=model.version,
                ref=model.ref,
                resolution=card["architecture"]["resolution"],
                latent_dim=card["architecture"]["latent_dim"],
                labels=card["labels"]["names"],
                default=model.ref == default,
                card_sha256=sha256_file(model.path / "model_card.json"),
            )
        )
    return ModelList(models=out)


@router.get("/v1/models/{name}", response_model=ModelCard, responses=_ERRORS)
@router.get("/v1/models/{name}/{version}", response_model=ModelCard, responses=_ERRORS)
def get_model(name: str, version: str | None = None) -> dict:
    """A model's card (the newest version unless one is named)."""
    try:
        return find_model(f"{name}/{version}" if version else name).card()
    except StoreError as exc:
        raise ApiProblem(404, "Not found", str(exc)) from None


FIGURE_TYPES = {".png": "image/png", ".gif": "image/gif"}


def _listed_files(name: str, version: str) -> tuple[StoredModel, dict[str, str]]:
    """The model and its SHA256SUMS (file name -> digest); a 404 for an unknown model."""
    try:
        model = find_model(f"{name}/{version}")
    except StoreError as exc:
        raise ApiProblem(404, "Not found", str(exc)) from None
    sums = {}
    for line in (model.path / SUMS).read_text().splitlines():
        digest, _, listed = line.partition("  ")
        sums[listed.strip()] = digest
    return model, sums


@router.get("/v1/models/{name}/{version}/files", response_model=ModelFigures, responses=_ERRORS)
def list_model_figures(name: str, version: str) -> ModelFigures:
    """The model's figures: its sample grid and the pictures of its evaluation."""
    _, sums = _listed_files(name, version)
    return ModelFigures(figures=sorted(f for f in sums if Path(f).suffix.lower() in FIGURE_TYPES))


@router.get(
    "/v1/models/{name}/{version}/files/{file_name}",
    response_class=Response,
    responses={
        200: {
            "content": {t: {"schema": {"type": "string", "format": "binary"}} for t in FIGURE_TYPES.values()}
        },
        **_ERRORS,
    },
)
def get_model_figure(name: str, version: str, file_name: str) -> Response:
    """One of a model's figures (its samples and evaluation pictures, PNG or GIF), checked against the
    model's SHA256SUMS."""
    model, sums = _listed_files(name, version)
    suffix = Path(file_name).suffix.lower()
    if file_name not in sums or suffix not in FIGURE_TYPES or "/" in file_name:
        raise ApiProblem(404, "Not found", f"model {model.ref} has no figure {file_name!r}")
    path = model.path / file_name
    if sha256_file(path) != sums[file_name]:
        raise ApiProblem(409, "Conflict", f"{file_name} of model {model.ref} differs from its SHA256SUMS")
    return Response(
        path.read_bytes(), media_type=FIGURE_TYPES[suffix], headers={"Cache-Control": "private, max-age=3600"}
    )


@router.post(
    "/v1/preview", responses={200: {"content": {"image/png": {}}}, **_ERRORS}, response_class=Response
)
def preview(body: PreviewRequest, jobs: deps.JobsDep, settings: deps.SettingsDep) -> Response:
    """A small grid of images for a seed and labels, as one PNG, answered at once."""
    if body.count > settings.max_preview:
        raise LimitProblem(f"count: a preview has at most {settings.max_preview} images", "count")
    model = jobs.model(body.model)
    resolution = resolve_resolution(body.resolution, model)
    resolved = label_rules.resolve(body.labels, model.label_names, body.count)

    indices = list(range(body.count))
    labels = label_rules.LabelPlan(model.label_names, body.seed, model.prior_patterns, **resolved)(indices)
    images = _generate(model, body.seed, indices, labels, resolution)
    return Response(grid_png(images), media_type="image/png", headers={"X-Thorax-Seed": str(body.seed)})


@router.post(
    "/v1/visualize", responses={200: {"content": {"image/png": {}}}, **_ERRORS}, response_class=Response
)
def visualize(body: VisualizeRequest, catalog: deps.CatalogDep, settings: deps.SettingsDep) -> Response:
    """The paper's pictures of one latent as a PNG: label transitions (Figure 5, greyscale, a row per label
    and a column per value) or difference maps (Figure 6, RGB, a row per label: healthy | diseased |
    the difference over the healthy image, red brighter and blue darker)."""
    transitions = body.kind == "transitions"
    if body.values is not None and not transitions:
        raise FieldProblem("values", "only for kind transitions (difference takes one `value`)")
    if body.value is not None and transitions:
        raise FieldProblem("value", "only for kind difference (transitions take a list of `values`)")
    if body.label is not None and body.labels is not None:
        raise FieldProblem("label", "give `label` or `labels`, not both")
    if body.label is None and body.labels is None:
        raise FieldProblem("label", "name the label to show (or several with `labels`)")
    model = _model(catalog, body.model)
    names = model.label_names
    if body.labels is None:
        positions = [names.index(label_rules.named("label", body.label, names))]
    else:
        positions = [
            names.index(label_rules.named(f"labels.{i}", n, names)) for i, n in enumerate(body.labels)
        ]
    resolution = resolve_resolution(body.resolution, model)

    values = list(body.values or TRANSITION_VALUES)
    count = len(positions) * len(values) if transitions else 1 + len(positions)  # difference: healthy first
    if count > settings.max_preview:
        field = "labels" if body.labels is not None else "values"
        detail = f"{field}: this picture needs {count} images; a picture has at most {settings.max_preview}"
        raise LimitProblem(detail, field)

    # Every tile is image 0 of the seed: only the labels change along a row and down the rows.
    labels = np.zeros((count, len(names)), np.float32)  # [count, L], row 0 of a difference is healthy
    diseased = 1.0 if body.value is None else body.value
    for row, position in enumerate(positions):
        if transitions:
            labels[row * len(values) : (row + 1) * len(values), position] = values
        else:
            labels[1 + row, position] = diseased
    images = _generate(model, body.seed, [0] * count, labels, resolution)  # [count, r, r]
    if transitions:
        picture = tile_grid(images.reshape(len(positions), len(values), resolution, resolution))
    else:
        picture = np.concatenate([difference_row(images[0], image) for image in images[1:]])
    return Response(png_bytes(picture), media_type="image/png", headers={"X-Thorax-Seed": str(body.seed)})


def _model(catalog: Catalog, ref: str | None) -> LoadedModel:
    """The model a request names (or the default); an unknown one is a 404 that names the field."""
    try:
        return catalog.get(ref)
    except StoreError as exc:
        errors = [{"field": "model", "message": str(exc)}]
        raise ApiProblem(404, "Not found", f"model: {exc}", errors=errors) from None
    except BackendError as exc:
        raise ApiProblem(502, "Backend error", str(exc)) from None


def _generate(
    model: LoadedModel, seed: int, indices: list[int], labels: np.ndarray, resolution: int
) -> np.ndarray:
    """uint8 [len(indices), r, r] from the model's backend; its failures are a 502, not a 500."""
    try:
        return downsample(model.backend.generate(seed, indices, labels), resolution)
    except BackendError as exc:
        raise ApiProblem(502, "Backend error", str(exc)) from None
