"""Jobs: `POST /generate` (= `POST /v1/jobs`), list, status, cancel, resume, manifest and shards."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from thoraxclient.schemas import (
    JobEstimate,
    JobList,
    JobRequest,
    JobStatus,
    Manifest,
    Problem,
    ShardEntry,
    ShardList,
)

from service import deps
from service.access import Caller
from service.backends import BackendError
from service.jobs import Job, JobManager
from service.problems import ApiProblem

router = APIRouter(tags=["jobs"], dependencies=[Depends(deps.require_api_key)])
_ERRORS = {
    code: {"model": Problem, "content": {"application/problem+json": {}}}
    for code in (401, 404, 409, 413, 422, 429, 503)
}


def _status(request: Request, job: Job, jobs: JobManager) -> JobStatus:
    url = str(request.url_for("job_status", job_id=job.id))
    return job.status(url, jobs.storage.location)


_CREATE = {
    200: {"model": JobEstimate, "description": "with `?dry_run=true`: what the job would cost"},
    **_ERRORS,
    502: {"model": Problem, "content": {"application/problem+json": {}}},
}


@router.post("/generate", status_code=202, response_model=JobStatus, responses=_CREATE)
@router.post("/v1/jobs", status_code=202, response_model=JobStatus, responses=_CREATE)
def create_job(
    body: JobRequest,
    request: Request,
    response: Response,
    jobs: deps.JobsDep,
    caller: deps.CallerDep,
    estimator: deps.EstimatorDep,
    dry_run: bool = False,
) -> JobStatus | JSONResponse:
    """Start a job: `count` radiographs as WebDataset shards; answers 202 with the job's id and URL.
    With `?dry_run=true` nothing starts: 200 with the images, bytes and time it would take (from a trial
    batch), or the error a submission would get."""
    if dry_run:
        spec = jobs.plan(body, caller)
        try:
            estimate = estimator.estimate(spec, jobs.model(body.model))
        except BackendError as exc:
            raise ApiProblem(502, "Backend error", str(exc)) from None
        return JSONResponse(estimate.model_dump(mode="json"))
    job = jobs.submit(body, caller)
    status = _status(request, job, jobs)
    response.headers["Location"] = status.url
    return status


@router.get("/v1/jobs", response_model=JobList, responses=_ERRORS)
def list_jobs(request: Request, jobs: deps.JobsDep, caller: deps.CallerDep) -> JobList:
    """The caller's jobs (every job for an admin key), newest first."""
    return JobList(jobs=[_status(request, job, jobs) for job in jobs.list(caller)])


@router.get("/v1/jobs/{job_id}", response_model=JobStatus, responses=_ERRORS, name="job_status")
def get_job(job_id: str, request: Request, jobs: deps.JobsDep, caller: deps.CallerDep) -> JobStatus:
    return _status(request, jobs.get(job_id, caller), jobs)


@router.delete("/v1/jobs/{job_id}", response_model=JobStatus, responses=_ERRORS)
def cancel_job(job_id: str, request: Request, jobs: deps.JobsDep, caller: deps.CallerDep) -> JobStatus:
    """Cancel a queued or running job; its committed shards stay, no manifest is written."""
    return _status(request, jobs.cancel(job_id, caller), jobs)


@router.post("/v1/jobs/{job_id}/resume", status_code=202, response_model=JobStatus, responses=_ERRORS)
def resume_job(job_id: str, request: Request, jobs: deps.JobsDep, caller: deps.CallerDep) -> JobStatus:
    """Resume a failed job from its first uncommitted shard."""
    return _status(request, jobs.resume(job_id, caller), jobs)


def _with_url(
    request: Request, jobs: JobManager, job_id: str, entry: ShardEntry, caller: Caller
) -> ShardEntry:
    """The entry with the URL a client reads it from: presigned in S3, else the gateway's shard route."""
    url = jobs.shard_url(job_id, entry, caller)
    if url is None:
        index = int(entry.name.removeprefix("shard-").removesuffix(".tar"))
        url = str(request.url_for("get_shard", job_id=job_id, shard_index=index))
    return entry.model_copy(update={"url": url})


@router.get("/v1/jobs/{job_id}/manifest", response_model=Manifest, responses=_ERRORS)
def get_manifest(
    job_id: str, request: Request, jobs: deps.JobsDep, caller: deps.CallerDep, urls: bool = False
) -> Response:
    """The manifest as stored; with `?urls=true` every shard also carries the URL to read it from."""
    data = jobs.manifest(job_id, caller)
    if not urls:
        return Response(data, media_type="application/json")
    manifest = Manifest.model_validate_json(data)
    manifest.shards = [_with_url(request, jobs, job_id, entry, caller) for entry in manifest.shards]
    return Response(manifest.model_dump_json(), media_type="application/json")


@router.get("/v1/jobs/{job_id}/shards", response_model=ShardList, responses=_ERRORS)
def list_shards(job_id: str, request: Request, jobs: deps.JobsDep, caller: deps.CallerDep) -> ShardList:
    """The shards committed so far, each with its checksum and URL: readable while the job runs."""
    job = jobs.get(job_id, caller)
    state, entries = job.state, jobs.shards(job_id, caller)  # state first: a succeeded job lists every shard
    return ShardList(
        job_id=job_id,
        state=state,
        shards_total=job.spec.shards_total,
        shards=[_with_url(request, jobs, job_id, entry, caller) for entry in entries],
    )


@router.get(
    "/v1/jobs/{job_id}/shards/{shard_index}",
    responses={
        200: {"content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}}},
        **_ERRORS,
    },
    response_class=StreamingResponse,
    name="get_shard",
)
def get_shard(job_id: str, shard_index: int, jobs: deps.JobsDep, caller: deps.CallerDep) -> StreamingResponse:
    """A committed shard's bytes (a WebDataset tar), streamed from storage."""
    entry, chunks = jobs.shard_stream(job_id, shard_index, caller)
    headers = {"Content-Length": str(entry.bytes), "X-Checksum-SHA256": entry.sha256}
    return StreamingResponse(chunks, media_type="application/x-tar", headers=headers)
