"""FastAPI dependencies: the gateway's parts (settings, jobs, catalog) and API-key access."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from service.access import LOCAL, Caller, key_id
from service.catalog import Catalog
from service.estimate import Estimator
from service.jobs import JobManager
from service.metrics import Metrics
from service.problems import ApiProblem
from service.settings import Settings
from service.storage import Storage
from service.studies import StudyManager


def settings(request: Request) -> Settings:
    return request.app.state.settings


def jobs(request: Request) -> JobManager:
    return request.app.state.jobs


def catalog(request: Request) -> Catalog:
    return request.app.state.catalog


def storage(request: Request) -> Storage:
    return request.app.state.storage


def metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def estimator(request: Request) -> Estimator:
    return request.app.state.estimator


def studies(request: Request) -> StudyManager:
    return request.app.state.studies


def require_api_key(request: Request) -> Caller:
    """With `THORAX_API_KEYS` set, a key is needed as `Authorization: Bearer KEY` or `X-API-Key: KEY`;
    the caller is that key (its id, and whether it is an admin key)."""
    settings = request.app.state.settings
    keys = settings.api_key_set
    if not keys:
        return LOCAL
    given = request.headers.get("x-api-key", "")
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        given = given or token.strip()
    matched = [key for key in keys if hmac.compare_digest(given.encode(), key.encode())]
    if not matched:
        raise ApiProblem(
            401, "Unauthorized", "a valid API key is needed (Authorization: Bearer KEY or X-API-Key)"
        )
    return Caller(key_id=key_id(matched[0]), admin=matched[0] in settings.admin_key_set)


SettingsDep = Annotated[Settings, Depends(settings)]
JobsDep = Annotated[JobManager, Depends(jobs)]
CatalogDep = Annotated[Catalog, Depends(catalog)]
StorageDep = Annotated[Storage, Depends(storage)]
MetricsDep = Annotated[Metrics, Depends(metrics)]
CallerDep = Annotated[Caller, Depends(require_api_key)]
EstimatorDep = Annotated[Estimator, Depends(estimator)]
StudiesDep = Annotated[StudyManager, Depends(studies)]
