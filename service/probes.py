"""The readiness probe's storage check, kept off the request pool.

`/readyz` used to call storage in a request thread and wait on it (an S3 read timeout of 60 s, three
tries): a storage stall and a burst of probes filled the pool, and `/healthz` and every route with it.
Here the check runs in one thread of its own, at most one check is in flight (probes that come meanwhile
wait on the same one), and a probe answers within PROBE_TIMEOUT_S whatever storage does.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from service.storage import Storage

PROBE_TIMEOUT_S = 5.0  # inside the chart's readinessProbe timeoutSeconds (10), with room for a loaded machine


class StorageProbe:
    """Runs `storage.check()`; also any other object with a `check()` that raises when it is not ready
    (the Dask executor's, which asks the scheduler)."""

    def __init__(self, storage: Storage, timeout_s: float = PROBE_TIMEOUT_S) -> None:
        self.storage, self.timeout_s = storage, timeout_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="thorax-probe")
        self._lock = threading.Lock()
        self._current: Future | None = None

    def _check_in_flight(self) -> Future:
        with self._lock:
            if self._current is None or self._current.done():
                self._current = self._executor.submit(self.storage.check)
            return self._current

    async def check(self) -> None:
        """Raise what `storage.check()` raises, or TimeoutError after `timeout_s`."""
        answer = asyncio.wrap_future(self._check_in_flight())
        await asyncio.wait_for(asyncio.shield(answer), self.timeout_s)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
