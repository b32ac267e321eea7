"""Probes and metrics: `/healthz` (alive), `/readyz` (model loaded, storage reachable), `/metrics`."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from thoraxclient.schemas import Problem

from service import deps
from service.executors import SchedulerUnavailable
from service.probes import StorageProbe
from service.problems import ApiProblem
from service.storage import StorageError

router = APIRouter(tags=["health"])
log = logging.getLogger("thorax.gateway")


# Both probes are `async def`: they run on the event loop and never wait for a request thread.


@router.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": Problem, "content": {"application/problem+json": {}}}})
async def readyz(request: Request, catalog: deps.CatalogDep, storage: deps.StorageDep) -> dict:
    loaded = [m.ref for m in catalog.loaded()]
    if not loaded:
        raise ApiProblem(503, "Not ready", "no model is loaded")
    # Unauthenticated: the answer names no folder, host or port; the log has the details.
    probe: StorageProbe = request.app.state.storage_probe
    try:
        await probe.check()
    except StorageError as exc:
        log.warning("readiness: storage %s is not reachable: %s", storage.location, exc)
        raise ApiProblem(503, "Not ready", "storage is not reachable") from None
    except TimeoutError:
        log.warning("readiness: storage %s did not answer within %g s", storage.location, probe.timeout_s)
        raise ApiProblem(503, "Not ready", f"storage did not answer within {probe.timeout_s:g} s") from None
    scheduler: StorageProbe | None = request.app.state.scheduler_probe  # with THORAX_EXECUTOR=dask
    if scheduler is not None:
        try:
            await scheduler.check()
        except SchedulerUnavailable as exc:
            log.warning("readiness: %s", exc)
            raise ApiProblem(503, "Not ready", "the Dask scheduler is not reachable") from None
        except TimeoutError:
            raise ApiProblem(503, "Not ready", "the Dask scheduler did not answer in time") from None
    return {"status": "ready", "models": loaded}


# Prometheus text, documented as such (the default would claim application/json).
@router.get(
    "/metrics",
    dependencies=[Depends(deps.require_api_key)],
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}},
)
def metrics(jobs: deps.JobsDep, m: deps.MetricsDep) -> Response:
    counts = jobs.counts()
    for state, n in counts.items():
        m.jobs.labels(state).set(n)
    m.queue_depth.set(counts["queued"])
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
