"""`GET /`: where to go from the gateway's address. A person who opens it in a browser gets a page of links
to the API's documentation and the web console; a program gets the same links as JSON. It needs no key
and names nothing of the deployment (the pages it points to need a key when keys are set)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

router = APIRouter(tags=["index"])


class Index(BaseModel):
    name: str
    version: str
    docs: str = Field(description="the API, interactive (Swagger UI); /redoc and /openapi.json beside it")
    redoc: str
    openapi: str
    console: str = Field(description="the web console")
    health: str


def _wants_html(request: Request) -> bool:
    """A browser's Accept puts text/html before JSON; curl and the SDK send */* or application/json."""
    accept = request.headers.get("accept", "")
    html, json = accept.find("text/html"), accept.find("application/json")
    return html >= 0 and (json < 0 or html < json)


@router.get(
    "/",
    response_model=Index,
    responses={200: {"content": {"text/html": {"schema": {"type": "string"}}}}},
    summary="links to the API documentation (/docs) and the web console (/console/)",
)
async def index(request: Request):
    links = Index(
        name=request.app.title, version=request.app.version, docs="/docs", redoc="/redoc",
        openapi="/openapi.json", console="/console/", health="/healthz",
    )  # fmt: skip
    if not _wants_html(request):
        return JSONResponse(links.model_dump())
    items = "".join(
        f'<li><a href="{href}">{href}</a>: {what}</li>'
        for href, what in [
            (links.docs, "the API, interactive"),
            (links.redoc, "the API, to read"),
            (links.console, "the web console"),
            (links.health, "the liveness probe"),
        ]
    )
    return HTMLResponse(f"<!doctype html><title>{links.name}</title><h1>{links.name} {links.version}</h1>"
                        f"<ul>{items}</ul>")  # fmt: skip
