"""Models: `GET /v1/models`, `GET /v1/models/{name}` (the model card), `POST /v1/preview` (a PNG grid)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from thoraxclient.model_card import ModelCard
from thoraxclient.schemas import ModelList, ModelSummary, PreviewRequest, Problem

from service import deps
from service import labels as label_rules
from service.backends import BackendError
from service.imaging import downsample, grid_png
from service.jobs import resolve_resolution
from service.problems import ApiProblem, LimitProblem
from thorax.store import StoreError, find_model, sha256_file

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
    try:
        images = downsample(model.backend.generate(body.seed, indices, labels), resolution)
    except BackendError as exc:
        raise ApiProblem(502, "Backend error", str(exc)) from None
    images = downsample(model.backend.generate(body.seed, indices, labels), resolution)
    return Response(grid_png(images), media_type="image/png", headers={"X-Thorax-Seed": str(body.seed)})
