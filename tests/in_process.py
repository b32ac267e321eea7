"""The SDK's sync `Client` against the gateway app in-process: an httpx transport that hands each request
to Starlette's TestClient.

The TestClient is built on `httpx2` when that is installed (Starlette deprecates plain httpx there), so
its own transport does not speak the SDK's httpx types; this adapter copies the request and the answer
across, and works with either."""

from __future__ import annotations

import httpx

# The TestClient hands over the decoded body: these would describe the encoded one.
_BODY_HEADERS = {"content-encoding", "content-length", "transfer-encoding"}


class InProcessTransport(httpx.BaseTransport):
    """httpx requests answered by the app behind `test_client` (a started FastAPI/Starlette TestClient)."""

    def __init__(self, test_client) -> None:
        self.test_client = test_client

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        headers, body = list(request.headers.multi_items()), request.read()
        answer = self.test_client.request(request.method, str(request.url), headers=headers, content=body)
        kept = [(k, v) for k, v in answer.headers.multi_items() if k.lower() not in _BODY_HEADERS]
        return httpx.Response(answer.status_code, headers=kept, content=answer.content, request=request)
