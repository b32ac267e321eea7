"""RFC 9457 problem+json for every error the gateway answers, each carrying the request id.

Error tree:
    ApiProblem                    any answer that is not a success, with its HTTP status
    ├── FieldProblem (422)        a request field is wrong; names the field, e.g. `labels.Cardiomegaly`
    └── LimitProblem (429)        past a limit: count per job, active jobs
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

PROBLEM_TYPE = "urn:thorax:problem:"  # a URI that names the kind without pretending to be a web page
MEDIA_TYPE = "application/problem+json"
log = logging.getLogger("thorax.gateway")


class ApiProblem(Exception):
    def __init__(
        self, status: int, title: str, detail: str, kind: str = "", errors: list[dict] | None = None
    ):
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail
        self.kind = kind or title.lower().replace(" ", "-")
        self.errors = errors


class FieldProblem(ApiProblem):
    def __init__(self, field: str, message: str):
        super().__init__(
            422,
            "Invalid request",
            f"{field}: {message}",
            "invalid-request",
            [{"field": field, "message": message}],
        )
        self.field = field


class LimitProblem(ApiProblem):
    def __init__(self, detail: str, field: str | None = None):
        errors = [{"field": field, "message": detail}] if field else None
        super().__init__(429, "Limit exceeded", detail, "limit-exceeded", errors)


def request_id_of(request: Request) -> str | None:
    return request.scope.get("state", {}).get("request_id")


def problem_body(
    status: int,
    title: str,
    detail: str,
    kind: str,
    request_id: str | None,
    instance: str | None = None,
    errors: list[dict] | None = None,
) -> dict:
    body = {
        "type": PROBLEM_TYPE + kind,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": instance,
        "request_id": request_id,
    }
    if errors:
        body["errors"] = errors
    return body


def problem_response(request: Request, problem: ApiProblem) -> JSONResponse:
    body = problem_body(
        problem.status,
        problem.title,
        problem.detail,
        problem.kind,
        request_id_of(request),
        request.url.path,
        problem.errors,
    )
    headers = {"Retry-After": "5"} if problem.status == 429 else None
    return JSONResponse(body, status_code=problem.status, media_type=MEDIA_TYPE, headers=headers)


def field_name(loc: tuple | list) -> str:
    """`("body", "labels", "dict[str,float]", "Cardiomegaly")` -> `labels.Cardiomegaly`: drop the request
    part and pydantic's union-member tags so that the name is the one a user wrote."""
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    kept = [p for p in parts if not any(c in p for c in "[](") and p not in ("LabelPrior",)]
    kept = [p or '""' for p in kept]  # an empty label name, shown as one
    return ".".join(kept) or "body"


_SHAPE_ERRORS = {"missing", "list_type", "dict_type", "model_type", "model_attributes_type", "float_type"}


def _most_specific(errors: list[dict]) -> list[dict]:
    """A value that fits no member of a union gets an error per member; keep the ones that say what is
    wrong inside the value the user wrote (e.g. `labels.Mass` not a number), not that it is not a list."""
    by_field: dict[tuple, list[dict]] = {}
    for err in errors:
        loc = tuple(err.get("loc", ()))
        by_field.setdefault(loc[:2], []).append(err)  # ("body", "labels"): the field the user wrote
    kept = []
    for group in by_field.values():
        inner = [e for e in group if e.get("type") not in _SHAPE_ERRORS and len(e.get("loc", ())) > 2]
        kept.extend(inner or group)
    return kept


def _is_json(content_type: str | None) -> bool:
    """FastAPI's rule for a body it parses: application/json or application/*+json, parameters aside."""
    kind = (content_type or "").split(";")[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


def _unreadable_body(request: Request, exc: RequestValidationError) -> list[dict] | None:
    """The error of a body that never became JSON, said so that the sender can fix it: malformed JSON by
    line and column (FastAPI gives a character offset as its field), or a body sent without the JSON
    content type (FastAPI then validates the raw bytes: "Input should be a valid dictionary")."""
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            text, offset = exc.body if isinstance(exc.body, str) else "", int(err["loc"][-1])
            line, column = text.count("\n", 0, offset) + 1, offset - text.rfind("\n", 0, offset)
            reason = err.get("ctx", {}).get("error")
            message = f"invalid JSON at line {line}, column {column}" + (f" ({reason})" if reason else "")
            return [{"field": "body", "message": message}]
    content_type = request.headers.get("content-type")
    if isinstance(exc.body, bytes | bytearray) and exc.body and not _is_json(content_type):
        sent = content_type or "none"
        message = f"must be application/json for a JSON body; this request sent {sent}"
        return [{"field": "content-type", "message": message}]
    return None


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> list[str]:
    """The methods some route answers at this path: Starlette's own Allow names only the first route's
    (here `/v1/jobs` is a POST route and a GET route), and FastAPI drops it from the 405."""
    routes = request.app.router.routes
    return [
        method
        for method in _METHODS
        if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)
    ]


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiProblem)
    async def _api_problem(request: Request, exc: ApiProblem) -> JSONResponse:
        return problem_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors, seen = _unreadable_body(request, exc) or [], set()
        for err in [] if errors else _most_specific(exc.errors()):
            field = field_name(err.get("loc", ()))
            if field not in seen:
                seen.add(field)
                errors.append({"field": field, "message": str(err.get("msg", "invalid"))})
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return problem_response(
            request, ApiProblem(422, "Invalid request", detail, "invalid-request", errors)
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        title = {404: "Not found", 405: "Method not allowed", 401: "Unauthorized"}.get(
            exc.status_code, "Error"
        )
        response = problem_response(request, ApiProblem(exc.status_code, title, str(exc.detail)))
        if exc.status_code == 405:
            response.headers["Allow"] = ", ".join(_allowed_methods(request))
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        problem = ApiProblem(
            500, "Internal error", "the gateway failed; the request id identifies it in its log"
        )
        return problem_response(request, problem)
