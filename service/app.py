"""`create_app(settings)`: the gateway as a FastAPI app. `thorax serve` runs it under uvicorn.

On start-up it loads the default model (verified through the model store), checks storage, and starts
the job workers, which resume any job that storage holds without a manifest.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from service import deps, problems
from service.catalog import Catalog
from service.estimate import Estimator
from service.jobs import JobManager
from service.metrics import Metrics
from service.middleware import RequestContext
from service.probes import StorageProbe
from service.routes import health, index, jobs, models, studies
from service.settings import Settings
from service.storage import open_storage
from service.studies import StudyManager

log = logging.getLogger("thorax.gateway")
CONSOLE = Path(__file__).parent / "console"  # the web console's static files, no build step


def docs_router() -> APIRouter:
    """`/openapi.json`, `/docs` and `/redoc`. With `THORAX_API_KEYS` set they need a key like every route
    but the probes (the browser pages then fail to load the schema: read it with a key instead)."""
    router = APIRouter(dependencies=[Depends(deps.require_api_key)], include_in_schema=False)

    @router.get("/openapi.json")
    async def openapi(request: Request) -> JSONResponse:
        return JSONResponse(request.app.openapi())

    @router.get("/docs")
    async def swagger(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{request.app.title} - Swagger UI")

    @router.get("/redoc")
    async def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title=f"{request.app.title} - ReDoc")

    return router


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    catalog = Catalog(settings)
    storage = open_storage(settings)
    metrics = Metrics()
    manager = JobManager(settings, storage, catalog, metrics)
    probe = StorageProbe(storage)
    # With the Dask executor, ready also means the scheduler answers (the same bounded, off-pool check).
    scheduler_probe = StorageProbe(manager.executor) if manager.shared else None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        catalog.get(None)  # the default model; a broken store stops the gateway here
        manager.start()
        try:
            yield
        finally:
            manager.stop()
            probe.close()
            if scheduler_probe is not None:
                scheduler_probe.close()
            catalog.close()

    app = FastAPI(
        title="Thorax gateway",
        version="0.1.0",
        summary="Synthetic chest radiographs as WebDataset shards in S3-compatible storage",
        lifespan=lifespan,
        docs_url=None,  # served by `docs_router` below, behind the API keys like every other route
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings, app.state.catalog, app.state.storage = settings, catalog, storage
    app.state.metrics, app.state.jobs, app.state.storage_probe = metrics, manager, probe
    app.state.scheduler_probe = scheduler_probe
    app.state.estimator = Estimator(settings.batch_size)
    app.state.studies = StudyManager(settings, storage, catalog)
    problems.install(app)
    app.include_router(index.router)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(models.router)
    app.include_router(studies.router)
    app.include_router(studies.reader_router)
    app.include_router(docs_router())
    # The console's files hold no data and need no key: every call they make sends the key the user gave.
    app.mount("/console", StaticFiles(directory=CONSOLE, html=True), name="console")

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        response = await call_next(request)
        metrics.requests.labels(request.method, f"{response.status_code // 100}xx").inc()
        if response.status_code >= 400 and response.status_code != 404:
            metrics.errors.labels("request").inc()
        return response

    app.add_middleware(RequestContext, max_body=settings.max_request_bytes)
    return app
