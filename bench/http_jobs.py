"""What the gateway benchmarks share: one JSON call to a gateway, and one job from submission to its
end, timed."""

from __future__ import annotations

import json
import time
import urllib.request


def call(url: str, body: dict | None = None) -> dict:
    """GET `url`, or POST `body` to it as JSON; the JSON answer."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def timed_job(url: str, body: dict, timeout: float, poll_s: float) -> tuple[float, dict]:
    """Submit `body` to the gateway at `url` and poll its status every `poll_s` seconds until it ends:
    (seconds from POST /generate to its success, to within poll_s; the final status). A job that does
    not succeed, or not within `timeout`, raises."""
    t0 = time.perf_counter()
    job = call(f"{url}/generate", body)
    deadline = time.monotonic() + timeout
    while (status := call(job["url"]))["state"] in ("queued", "running"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"job not finished after {timeout}s: {status}")
        time.sleep(poll_s)
    seconds = time.perf_counter() - t0
    if status["state"] != "succeeded":
        raise RuntimeError(f"job {status['state']}: {status['error']}")
    return seconds, status
