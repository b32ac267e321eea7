"""`create_app(settings)`: the gateway as a FastAPI app. `thorax serve` runs it under uvicorn.

On start-up it loads the default model (verified through the model store), checks storage, and starts
the job workers, which resume any job that storage holds without a manifest.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request

from service import problems
from service.catalog import Catalog
from service.jobs import JobManager
from service.metrics import Metrics
from service.middleware import RequestContext
from service.probes import StorageProbe
from service.routes import health, jobs, models
from service.settings import Settings
from service.storage import open_storage

log = logging.getLogger("thorax.gateway")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    catalog = Catalog(settings)
    storage = open_storage(settings)
    metrics = Metrics()
    manager = JobManager(settings, storage, catalog, metrics)
    probe = StorageProbe(storage)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        catalog.get(None)  # the default model; a broken store stops the gateway here
        manager.start()
        try:
            yield
        finally:
            manager.stop()
            probe.close()
            catalog.close()

    app = FastAPI(
        title="Thorax gateway",
        version="0.1.0",
        summary="Synthetic chest radiographs as WebDataset shards in S3-compatible storage",
        lifespan=lifespan,
    )
    app.state.settings, app.state.catalog, app.state.storage = settings, catalog, storage
    app.state.metrics, app.state.jobs, app.state.storage_probe = metrics, manager, probe
    problems.install(app)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(models.router)

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        response = await call_next(request)
        metrics.requests.labels(request.method, f"{response.status_code // 100}xx").inc()
        if response.status_code >= 400 and response.status_code != 404:
            metrics.errors.labels("request").inc()
        return response

    app.add_middleware(RequestContext, max_body=settings.max_request_bytes)
    return app
