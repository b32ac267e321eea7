"""Pure ASGI middleware: a request id on every request and response, and a cap on request body size."""

from __future__ import annotations

import json
import re
import uuid

from service.problems import MEDIA_TYPE, problem_body

_GOOD_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestContext:
    """Accepts `X-Request-ID` (or makes one), echoes it, and refuses bodies over `max_body` bytes with 413.

    The body is read (up to the cap) before the app sees it, so a chunked upload cannot slip past."""

    def __init__(self, app, max_body: int) -> None:
        self.app, self.max_body = app, max_body

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _GOOD_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", request_id.encode())]}
            await send(message)

        if scope["method"] in ("POST", "PUT", "PATCH"):
            chunks, size = [], 0
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    break  # the client went away
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                if size > self.max_body:
                    detail = f"the request body is larger than {self.max_body} bytes"
                    await _problem(scope, send_with_id, request_id, 413, "Request too large", detail)
                    return
                if not message.get("more_body"):
                    break
            body, replayed = b"".join(chunks), False
            if not _is_utf8(body):  # JSON is UTF-8 (RFC 8259); else FastAPI answers an undocumented 400
                errors = [{"field": "body", "message": "not valid UTF-8"}]
                await _problem(scope, send_with_id, request_id, 422, "Invalid request",
                               "body: not valid UTF-8", errors)  # fmt: skip
                return

            async def replay():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send_with_id)
            return
        await self.app(scope, receive, send_with_id)


def _is_utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


async def _problem(
    scope, send, request_id: str, status: int, title: str, detail: str, errors: list[dict] | None = None
) -> None:
    """Answer a problem+json from the middleware, before the app has seen the request."""
    kind = title.lower().replace(" ", "-")
    body = json.dumps(
        problem_body(status, title, detail, kind, request_id, scope.get("path"), errors)
    ).encode()
    headers = [(b"content-type", MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
