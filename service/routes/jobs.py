"""Jobs: `POST /generate` (= `POST /v1/jobs`), list, status, cancel, resume, manifest."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from thoraxclient.schemas import JobList, JobRequest, JobStatus, Manifest, Problem

from service import deps
from service.jobs import Job, JobManager

router = APIRouter(tags=["jobs"], dependencies=[Depends(deps.require_api_key)])
_ERRORS = {
    code: {"model": Problem, "content": {"application/problem+json": {}}}
    for code in (401, 404, 409, 413, 422, 429, 503)
}


def _status(request: Request, job: Job, jobs: JobManager) -> JobStatus:
    url = str(request.url_for("job_status", job_id=job.id))
    return job.status(url, jobs.storage.location)


@router.post("/generate", status_code=202, response_model=JobStatus, responses=_ERRORS)
@router.post("/v1/jobs", status_code=202, response_model=JobStatus, responses=_ERRORS)
def create_job(body: JobRequest, request: Request, response: Response, jobs: deps.JobsDep) -> JobStatus:
    """Start a job: `count` radiographs as WebDataset shards; answers 202 with the job's id and URL."""
    job = jobs.submit(body)
    status = _status(request, job, jobs)
    response.headers["Location"] = status.url
    return status


@router.get("/v1/jobs", response_model=JobList, responses=_ERRORS)
def list_jobs(request: Request, jobs: deps.JobsDep) -> JobList:
    return JobList(jobs=[_status(request, job, jobs) for job in jobs.list()])


@router.get("/v1/jobs/{job_id}", response_model=JobStatus, responses=_ERRORS, name="job_status")
def get_job(job_id: str, request: Request, jobs: deps.JobsDep) -> JobStatus:
    return _status(request, jobs.get(job_id), jobs)


@router.delete("/v1/jobs/{job_id}", response_model=JobStatus, responses=_ERRORS)
def cancel_job(job_id: str, request: Request, jobs: deps.JobsDep) -> JobStatus:
    """Cancel a queued or running job; its committed shards stay, no manifest is written."""
    return _status(request, jobs.cancel(job_id), jobs)


@router.post("/v1/jobs/{job_id}/resume", status_code=202, response_model=JobStatus, responses=_ERRORS)
def resume_job(job_id: str, request: Request, jobs: deps.JobsDep) -> JobStatus:
    """Resume a failed job from its first uncommitted shard."""
    return _status(request, jobs.resume(job_id), jobs)


@router.get("/v1/jobs/{job_id}/manifest", response_model=Manifest, responses=_ERRORS)
def get_manifest(job_id: str, jobs: deps.JobsDep) -> Response:
    return Response(jobs.manifest(job_id), media_type="application/json")
