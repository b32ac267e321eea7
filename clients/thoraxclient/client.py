"""`Client` and its async twin `AsyncClient`: the gateway's HTTP API as Python calls.

Both take an injected httpx transport (`httpx.MockTransport` in tests). Shards are read through the URLs
the gateway gives (presigned for S3, the gateway's shard route for a local folder): a client needs no
storage credentials, and the API key is only ever sent to the gateway itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from thoraxclient.errors import IntegrityError, JobError, ThoraxError, TransportError, api_error
from thoraxclient.model_card import ModelCard
from thoraxclient.schemas import (
    TERMINAL_STATES,
    JobEstimate,
    JobList,
    JobRequest,
    JobStatus,
    Manifest,
    ModelList,
    ModelSummary,
    Problem,
    ShardEntry,
    ShardList,
    VisualizeRequest,
)
from thoraxclient.shards import Sample, iter_shard

DEFAULT_URL = "http://127.0.0.1:8000"
JobRef = JobStatus | str


def default_url() -> str:
    """`THORAX_URL`, else the gateway's default address on this machine."""
    return os.environ.get("THORAX_URL", DEFAULT_URL)


def _job_id(job: JobRef) -> str:
    return job.id if isinstance(job, JobStatus) else str(job)


def _raise_for_problem(response: httpx.Response) -> None:
    if response.is_success:
        return
    request_id = response.headers.get("x-request-id")
    try:
        problem = Problem.model_validate_json(response.content)
    except ValidationError:
        text = response.text[:500] if response.content else None
        problem = Problem(title=response.reason_phrase or "Error", status=response.status_code, detail=text)
    raise api_error(problem, request_id)


def _job_request(count: int, labels: Any, **fields: Any) -> dict:
    """The JSON body of a job, validated here so that a bad argument fails before any request."""
    try:
        body = JobRequest(count=count, labels=labels, **fields)
    except ValidationError as exc:
        raise ValueError(f"invalid job request: {exc}") from None
    return body.model_dump(mode="json", exclude_none=True)


def _visualize_request(kind: str, label: str | list[str], **fields: Any) -> dict:
    """The JSON body of a picture, validated here so that a bad argument fails before any request."""
    named = {"label": label} if isinstance(label, str) else {"labels": list(label)}
    try:
        body = VisualizeRequest(kind=kind, **named, **fields)
    except ValidationError as exc:
        raise ValueError(f"invalid visualize request: {exc}") from None
    return body.model_dump(mode="json", exclude_none=True)


def progress_bar(total: int, enabled: bool, description: str, unit: str = "img", **options: Any):
    """A tqdm bar (None when not `enabled`); `options` go to tqdm (unit_scale=True for bytes)."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit=unit, dynamic_ncols=True, **options)


def _show_job_progress(bar, status: JobStatus) -> None:
    """The bar at the images made (encoded), its text after it the images committed in shards: a shard
    commits only when whole, so the second figure moves in steps of the shard size."""
    made = status.images_done if status.images_made is None else status.images_made
    bar.update(made - bar.n)
    bar.set_postfix_str(f"{status.images_done} in shards ({status.shards_done}/{status.shards_total})")


def _verify(entry: ShardEntry, data: bytes) -> None:
    if hashlib.sha256(data).hexdigest() != entry.sha256:
        raise IntegrityError(f"{entry.name}: SHA-256 differs from the manifest's {entry.sha256}")


class _Base:
    def __init__(self, base_url: str | None, api_key: str | None, timeout: float) -> None:
        self.base_url = (base_url or default_url()).rstrip("/")
        self.api_key, self.timeout = api_key, timeout

    def _headers(self) -> dict[str, str]:
        headers = {"X-Request-ID": uuid.uuid4().hex, "User-Agent": "thoraxclient"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _is_gateway(self, url: str) -> bool:
        return url.startswith(self.base_url + "/")


class Client(_Base):
    """The gateway at `base_url` (default `THORAX_URL` or http://127.0.0.1:8000), with an optional API key.

    `transport` replaces httpx's network transport (e.g. `httpx.MockTransport`); use as a context manager
    or call `close()`.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout)
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)
        self._plain = httpx.Client(timeout=timeout, transport=transport)  # presigned URLs: no API key

    def close(self) -> None:
        self._http.close()
        self._plain.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        http = self._http if url.startswith("/") or self._is_gateway(url) else self._plain
        headers = self._headers() if http is self._http else {}
        try:
            response = http.request(method, url, headers=headers, **kwargs)
        except httpx.TransportError as exc:
            raise TransportError(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
        _raise_for_problem(response)
        return response

    @contextmanager
    def _stream(self, method: str, url: str) -> Iterator[httpx.Response]:
        """`_request` with the body left to read in chunks."""
        http = self._http if url.startswith("/") or self._is_gateway(url) else self._plain
        headers = self._headers() if http is self._http else {}
        try:
            with http.stream(method, url, headers=headers) as response:
                if not response.is_success:
                    response.read()
                    _raise_for_problem(response)
                yield response
        except httpx.TransportError as exc:
            raise TransportError(f"{method} {url}: {type(exc).__name__}: {exc}") from exc

    def models(self) -> list[ModelSummary]:
        """The models the gateway serves."""
        return ModelList.model_validate_json(self._request("GET", "/v1/models").content).models

    def model_card(self, name: str) -> ModelCard:
        """A model's card: NAME (its newest version) or NAME/VERSION."""
        return ModelCard.model_validate_json(self._request("GET", f"/v1/models/{name}").content)

    def visualize(self, kind: str, label: str | list[str], **fields: Any) -> bytes:
        """The paper's pictures of one latent (image 0 of `seed`) as PNG bytes, a row per label.

        `kind` is "transitions" (the label alone going through `values`, default 0, .3, .6, 1) or
        "difference" (healthy | the label at `value`, default 1 | their difference over the healthy image,
        red brighter and blue darker). `label` is one label name or a list of them (any case); `fields` are
        VisualizeRequest's (model, values, value, seed, resolution).
        """
        body = _visualize_request(kind, label, **fields)
        return self._request("POST", "/v1/visualize", json=body).content

    def generate(self, count: int, labels: Any = None, **fields: Any) -> JobStatus:
        """Start a job of `count` images; `fields` are JobRequest's (model, resolution, seed, format,
        shard_size, prefix). Returns the job's first status."""
        body = _job_request(count, labels, **fields)
        return JobStatus.model_validate_json(self._request("POST", "/v1/jobs", json=body).content)

    def dry_run(self, count: int, labels: Any = None, **fields: Any) -> JobEstimate:
        """What `generate` with the same arguments would make and cost (images, shards, bytes, seconds,
        from a trial batch on the gateway), without starting it; a request that `generate` would have
        refused raises the same error."""
        body = _job_request(count, labels, **fields)
        response = self._request("POST", "/v1/jobs", json=body, params={"dry_run": "true"})
        return JobEstimate.model_validate_json(response.content)

    def job(self, job: JobRef) -> JobStatus:
        """A job's current status."""
        return JobStatus.model_validate_json(self._request("GET", f"/v1/jobs/{_job_id(job)}").content)

    def jobs(self) -> list[JobStatus]:
        """Every job the gateway knows, newest first."""
        return JobList.model_validate_json(self._request("GET", "/v1/jobs").content).jobs

    def cancel(self, job: JobRef) -> JobStatus:
        """Cancel a queued or running job; its committed shards stay."""
        return JobStatus.model_validate_json(self._request("DELETE", f"/v1/jobs/{_job_id(job)}").content)

    def resume(self, job: JobRef) -> JobStatus:
        """Resume a failed job from its first uncommitted shard."""
        path = f"/v1/jobs/{_job_id(job)}/resume"
        return JobStatus.model_validate_json(self._request("POST", path).content)

    def wait(
        self, job: JobRef, progress: bool = True, timeout: float | None = None, poll_interval: float = 0.5
    ) -> JobStatus:
        """Wait until the job ends, with a progress bar; JobError unless it succeeded, TimeoutError after
        `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        status = self.job(job)
        bar = progress_bar(status.count, progress, f"job {status.id[:8]}")
        try:
            while True:
                if bar is not None:
                    _show_job_progress(bar, status)
                if status.state in TERMINAL_STATES:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {status.id} still {status.state} after {timeout}s")
                time.sleep(poll_interval)
                status = self.job(status.id)
        finally:
            if bar is not None:
                bar.close()
        if status.state != "succeeded":
            raise JobError(status)
        return status

    def manifest(self, job: JobRef) -> Manifest:
        """The manifest of a succeeded job, every shard with the URL to read it from."""
        response = self._request("GET", f"/v1/jobs/{_job_id(job)}/manifest", params={"urls": "true"})
        return Manifest.model_validate_json(response.content)

    def shards(self, job: JobRef) -> ShardList:
        """The job's shards committed so far, with URLs (while it runs too)."""
        return ShardList.model_validate_json(self._request("GET", f"/v1/jobs/{_job_id(job)}/shards").content)

    def shard_bytes(self, entry: ShardEntry) -> bytes:
        """A shard's bytes, read from its URL and checked against its SHA-256."""
        if not entry.url:
            raise ThoraxError(f"{entry.name} has no URL; ask the gateway with manifest() or shards()")
        data = self._request("GET", entry.url).content
        _verify(entry, data)
        return data

    def download_shard(
        self, entry: ShardEntry, path: Path, on_bytes: Callable[[int], object] | None = None
    ) -> Path:
        """A shard streamed to `path` (written whole or not at all) and checked against its SHA-256;
        `on_bytes(n)` is called for every n bytes received (a progress bar's `update`)."""
        if not entry.url:
            raise ThoraxError(f"{entry.name} has no URL; ask the gateway with manifest() or shards()")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".partial-{path.name}")
        digest = hashlib.sha256()
        with self._stream("GET", entry.url) as response, open(temp, "wb") as fh:
            for chunk in response.iter_bytes(1 << 16):
                digest.update(chunk)
                fh.write(chunk)
                if on_bytes is not None:
                    on_bytes(len(chunk))
        if digest.hexdigest() != entry.sha256:
            temp.unlink(missing_ok=True)
            raise IntegrityError(f"{entry.name}: SHA-256 differs from the manifest's {entry.sha256}")
        os.replace(temp, path)
        return path

    def committed_shards(
        self, job: JobRef, poll_interval: float = 0.5, timeout: float | None = None
    ) -> Iterator[ShardEntry]:
        """Each shard of the job (name, SHA-256, image count, URL) as soon as it is committed, in order,
        while or after the job runs; ends after the last one. JobError if the job fails or is cancelled
        first, TimeoutError after `timeout` seconds. The URLs are plain GETs for S3 storage (presigned),
        so that `webdataset` can stream them (see clients/README.md); the gateway's own shard route for
        a local folder needs the API key."""
        job_id, done, deadline = _job_id(job), 0, None if timeout is None else time.monotonic() + timeout
        while True:
            listing = self.shards(job_id)
            yield from listing.shards[done:]
            done = len(listing.shards)
            if done >= listing.shards_total and listing.state == "succeeded":
                return
            if listing.state in ("failed", "cancelled"):
                raise JobError(self.job(job_id))
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {listing.state} after {timeout}s")
            time.sleep(poll_interval)

    def iter_samples(
        self, job: JobRef, decode: bool = True, poll_interval: float = 0.5, timeout: float | None = None
    ) -> Iterator[Sample]:
        """(image, labels, metadata) of every image of the job, shard by shard as shards are committed,
        while or after the job runs, each shard checked against its SHA-256. JobError if it fails or is
        cancelled before the last shard."""
        for entry in self.committed_shards(job, poll_interval=poll_interval, timeout=timeout):
            yield from iter_shard(self.shard_bytes(entry), decode=decode)


class AsyncClient(_Base):
    """`Client`'s async twin: the same methods, awaited (`iter_samples` is an async iterator)."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, transport=transport)
        self._plain = httpx.AsyncClient(timeout=timeout, transport=transport)

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._plain.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        http = self._http if url.startswith("/") or self._is_gateway(url) else self._plain
        headers = self._headers() if http is self._http else {}
        try:
            response = await http.request(method, url, headers=headers, **kwargs)
        except httpx.TransportError as exc:
            raise TransportError(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
        _raise_for_problem(response)
        return response

    async def models(self) -> list[ModelSummary]:
        """The models the gateway serves."""
        return ModelList.model_validate_json((await self._request("GET", "/v1/models")).content).models

    async def model_card(self, name: str) -> ModelCard:
        """A model's card: NAME (its newest version) or NAME/VERSION."""
        return ModelCard.model_validate_json((await self._request("GET", f"/v1/models/{name}")).content)

    async def visualize(self, kind: str, label: str | list[str], **fields: Any) -> bytes:
        """The paper's pictures of one latent as PNG bytes (see `Client.visualize`)."""
        body = _visualize_request(kind, label, **fields)
        return (await self._request("POST", "/v1/visualize", json=body)).content

    async def generate(self, count: int, labels: Any = None, **fields: Any) -> JobStatus:
        """Start a job of `count` images (see `Client.generate`)."""
        body = _job_request(count, labels, **fields)
        return JobStatus.model_validate_json((await self._request("POST", "/v1/jobs", json=body)).content)

    async def dry_run(self, count: int, labels: Any = None, **fields: Any) -> JobEstimate:
        """What a job would make and cost, without starting it (see `Client.dry_run`)."""
        body = _job_request(count, labels, **fields)
        response = await self._request("POST", "/v1/jobs", json=body, params={"dry_run": "true"})
        return JobEstimate.model_validate_json(response.content)

    async def job(self, job: JobRef) -> JobStatus:
        """A job's current status."""
        response = await self._request("GET", f"/v1/jobs/{_job_id(job)}")
        return JobStatus.model_validate_json(response.content)

    async def jobs(self) -> list[JobStatus]:
        """Every job the gateway knows, newest first."""
        return JobList.model_validate_json((await self._request("GET", "/v1/jobs")).content).jobs

    async def cancel(self, job: JobRef) -> JobStatus:
        """Cancel a queued or running job; its committed shards stay."""
        response = await self._request("DELETE", f"/v1/jobs/{_job_id(job)}")
        return JobStatus.model_validate_json(response.content)

    async def resume(self, job: JobRef) -> JobStatus:
        """Resume a failed job from its first uncommitted shard."""
        response = await self._request("POST", f"/v1/jobs/{_job_id(job)}/resume")
        return JobStatus.model_validate_json(response.content)

    async def wait(
        self, job: JobRef, progress: bool = True, timeout: float | None = None, poll_interval: float = 0.5
    ) -> JobStatus:
        """Wait until the job ends (see `Client.wait`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        status = await self.job(job)
        bar = progress_bar(status.count, progress, f"job {status.id[:8]}")
        try:
            while True:
                if bar is not None:
                    _show_job_progress(bar, status)
                if status.state in TERMINAL_STATES:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {status.id} still {status.state} after {timeout}s")
                await asyncio.sleep(poll_interval)
                status = await self.job(status.id)
        finally:
            if bar is not None:
                bar.close()
        if status.state != "succeeded":
            raise JobError(status)
        return status

    async def manifest(self, job: JobRef) -> Manifest:
        """The manifest of a succeeded job, every shard with its URL."""
        path = f"/v1/jobs/{_job_id(job)}/manifest"
        return Manifest.model_validate_json(
            (await self._request("GET", path, params={"urls": "true"})).content
        )

    async def shards(self, job: JobRef) -> ShardList:
        """The job's shards committed so far, with URLs."""
        response = await self._request("GET", f"/v1/jobs/{_job_id(job)}/shards")
        return ShardList.model_validate_json(response.content)

    async def shard_bytes(self, entry: ShardEntry) -> bytes:
        """A shard's bytes, checked against its SHA-256."""
        if not entry.url:
            raise ThoraxError(f"{entry.name} has no URL; ask the gateway with manifest() or shards()")
        data = (await self._request("GET", entry.url)).content
        _verify(entry, data)
        return data

    async def committed_shards(
        self, job: JobRef, poll_interval: float = 0.5, timeout: float | None = None
    ) -> AsyncIterator[ShardEntry]:
        """Each shard of the job as soon as it is committed (see `Client.committed_shards`)."""
        job_id, done, deadline = _job_id(job), 0, None if timeout is None else time.monotonic() + timeout
        while True:
            listing = await self.shards(job_id)
            for entry in listing.shards[done:]:
                yield entry
            done = len(listing.shards)
            if done >= listing.shards_total and listing.state == "succeeded":
                return
            if listing.state in ("failed", "cancelled"):
                raise JobError(await self.job(job_id))
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {listing.state} after {timeout}s")
            await asyncio.sleep(poll_interval)

    async def iter_samples(
        self, job: JobRef, decode: bool = True, poll_interval: float = 0.5, timeout: float | None = None
    ) -> AsyncIterator[Sample]:
        """The job's samples as shards are committed (see `Client.iter_samples`)."""
        async for entry in self.committed_shards(job, poll_interval=poll_interval, timeout=timeout):
            for sample in iter_shard(await self.shard_bytes(entry), decode=decode):
                yield sample
