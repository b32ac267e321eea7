"""The errors thoraxclient raises, one tree:

ThoraxError
├── TransportError            the gateway (or a shard URL) could not be reached or timed out
├── ApiError                  the gateway answered an error: `.problem` (RFC 9457), `.request_id`, `.status`
│   ├── AuthenticationError   401: a missing or wrong API key
│   ├── NotFoundError         404: no such job, model or shard
│   ├── ConflictError         409: e.g. the manifest of a job that has not succeeded
│   ├── RequestError          400, 413, 422: the request was wrong (`.problem.errors` names the fields)
│   ├── RateLimitError        429: too many images or jobs at once
│   └── ServerError           5xx: the gateway or its storage failed
├── JobError                  a job ended failed or cancelled (`.job`, its last status)
├── IntegrityError            a shard's bytes do not match the manifest's checksum
└── DatasetError              a dataset request is wrong (an unknown label, a bad base table); raised
                              before any job starts
"""

from __future__ import annotations

from thoraxclient.schemas import JobStatus, Problem


class ThoraxError(Exception):
    """Every error of thoraxclient."""


class TransportError(ThoraxError):
    """The gateway or a shard URL could not be reached, or did not answer in time."""


class ApiError(ThoraxError):
    """The gateway answered with an error; `problem` holds its RFC 9457 details."""

    def __init__(self, problem: Problem, request_id: str | None = None) -> None:
        self.problem, self.status = problem, problem.status
        self.request_id = request_id or problem.request_id
        detail = f": {problem.detail}" if problem.detail else ""
        rid = f" (request id {self.request_id})" if self.request_id else ""
        super().__init__(f"{problem.status} {problem.title}{detail}{rid}")


class AuthenticationError(ApiError):
    """401: a missing or wrong API key."""


class NotFoundError(ApiError):
    """404: no such job, model or shard."""


class ConflictError(ApiError):
    """409: the job is not in a state that allows this."""


class RequestError(ApiError):
    """400, 413 or 422: the request was wrong; `problem.errors` lists the fields."""


class RateLimitError(ApiError):
    """429: too many images or active jobs."""


class ServerError(ApiError):
    """5xx: the gateway or its storage failed."""


class JobError(ThoraxError):
    """A job ended failed or cancelled; `job` is its last status."""

    def __init__(self, job: JobStatus) -> None:
        self.job = job
        why = f": {job.error}" if job.error else ""
        super().__init__(f"job {job.id} {job.state}{why}")


class IntegrityError(ThoraxError):
    """A shard's bytes do not match the checksum in the manifest."""


class DatasetError(ThoraxError, ValueError):
    """A dataset request is wrong (unknown label, bad base table, bad weights); nothing was started."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: RequestError, 401: AuthenticationError, 403: AuthenticationError, 404: NotFoundError,
    409: ConflictError, 413: RequestError, 422: RequestError, 429: RateLimitError,
}  # fmt: skip


def api_error(problem: Problem, request_id: str | None) -> ApiError:
    """The typed error for a problem answer."""
    cls = _BY_STATUS.get(problem.status, ServerError if problem.status >= 500 else ApiError)
    return cls(problem, request_id)
