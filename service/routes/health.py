"""Probes and metrics: `/healthz` (alive), `/readyz` (model loaded, storage reachable), `/metrics`."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from thoraxclient.schemas import Problem

from service import deps
from service.probes import StorageProbe
from service.problems import ApiProblem
from service.storage import StorageError

router = APIRouter(tags=["health"])


# Both probes are `async def`: they run on the event loop and never wait for a request thread.


@router.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": Problem, "content": {"application/problem+json": {}}}})
async def readyz(request: Request, catalog: deps.CatalogDep, storage: deps.StorageDep) -> dict:
    loaded = [m.ref for m in catalog.loaded()]
    if not loaded:
        raise ApiProblem(503, "Not ready", "no model is loaded")
    probe: StorageProbe = request.app.state.storage_probe
    try:
        await probe.check()
    except StorageError as exc:
        raise ApiProblem(503, "Not ready", f"storage is not reachable: {exc}") from None
    except TimeoutError:
        raise ApiProblem(503, "Not ready", f"storage did not answer within {probe.timeout_s:g} s") from None
    return {"status": "ready", "models": loaded, "storage": storage.location}


@router.get("/metrics", dependencies=[Depends(deps.require_api_key)])
def metrics(jobs: deps.JobsDep, m: deps.MetricsDep) -> Response:
    counts = jobs.counts()
    for state, n in counts.items():
        m.jobs.labels(state).set(n)
    m.queue_depth.set(counts["queued"])
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
