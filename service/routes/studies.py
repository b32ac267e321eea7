"""Reader studies. The operator's routes need an API key: `POST /v1/studies`, list, a study, its results
(JSON and CSV) and its answers (CSV). A reader's routes need only their own token, from their link:
`GET /v1/read/{token}` (where they are), the current image, and `POST /v1/read/{token}/answers`."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from thoraxclient.schemas import (
    Problem,
    ReaderAnswer,
    ReaderState,
    Study,
    StudyList,
    StudyRequest,
    StudyResultRow,
    StudyResults,
)

from service import deps
from service.studies import StudyManager, StudyRecord, csv_text

router = APIRouter(tags=["studies"], dependencies=[Depends(deps.require_api_key)])
reader_router = APIRouter(tags=["reading"])  # the token in the path is the reader's only credential
_ERRORS = {
    code: {"model": Problem, "content": {"application/problem+json": {}}}
    for code in (401, 404, 409, 422, 429, 503)
}
_READER_ERRORS = {k: v for k, v in _ERRORS.items() if k != 401}
_CSV = {200: {"content": {"text/csv": {"schema": {"type": "string"}}}}}
ANSWER_COLUMNS = ["reader", "group", "position", "block", "resolution", "image", "truth", "answer",
                  "correct", "seconds", "late"]  # fmt: skip


def _study(request: Request, studies: StudyManager, record: StudyRecord) -> Study:
    return studies.summary(record, str(request.url_for("get_study", study_id=record.id)))


@router.post("/v1/studies", status_code=201, response_model=Study, responses=_ERRORS)
def create_study(
    body: StudyRequest, request: Request, response: Response, studies: deps.StudiesDep, caller: deps.CallerDep
) -> Study:
    """Create a blinded reader study; only this answer carries each reader's token and link."""
    study = studies.create(body, caller, reader_url=str(request.base_url) + "console/read.html#")
    study.url = str(request.url_for("get_study", study_id=study.id))
    response.headers["Location"] = study.url
    return study


@router.get("/v1/studies", response_model=StudyList, responses=_ERRORS)
def list_studies(request: Request, studies: deps.StudiesDep, caller: deps.CallerDep) -> StudyList:
    """The caller's studies (every study for an admin key), newest first."""
    return StudyList(studies=[_study(request, studies, r) for r in studies.list(caller)])


@router.get("/v1/studies/{study_id}", response_model=Study, responses=_ERRORS, name="get_study")
def get_study(study_id: str, request: Request, studies: deps.StudiesDep, caller: deps.CallerDep) -> Study:
    """A study and how far each reader has got."""
    return _study(request, studies, studies.get(study_id, caller))


@router.get("/v1/studies/{study_id}/results", response_model=StudyResults, responses=_ERRORS)
def study_results(
    study_id: str, request: Request, studies: deps.StudiesDep, caller: deps.CallerDep
) -> StudyResults:
    """Accuracy, sensitivity and specificity (positive = generated) per reader and per group, per block and
    over every block; Fleiss' kappa per group."""
    record = studies.get(study_id, caller)
    return StudyResults(study=_study(request, studies, record), rows=studies.results(record))


@router.get("/v1/studies/{study_id}/results.csv", response_class=Response, responses={**_CSV, **_ERRORS})
def study_results_csv(study_id: str, studies: deps.StudiesDep, caller: deps.CallerDep) -> Response:
    """The results as CSV, a row per reader or group and block (resolution empty: every block)."""
    record = studies.get(study_id, caller)
    rows = [row.model_dump() for row in studies.results(record)]
    text = csv_text(rows, list(StudyResultRow.model_fields))
    return _csv(text, f"study-{record.id}-results.csv")


@router.get("/v1/studies/{study_id}/answers.csv", response_class=Response, responses={**_CSV, **_ERRORS})
def study_answers_csv(study_id: str, studies: deps.StudiesDep, caller: deps.CallerDep) -> Response:
    """Every answer with the image's truth, a row per reader and image."""
    record = studies.get(study_id, caller)
    return _csv(csv_text(studies.answers_table(record), ANSWER_COLUMNS), f"study-{record.id}-answers.csv")


def _csv(text: str, filename: str) -> Response:
    headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
    return Response(text, media_type="text/csv", headers=headers)


def _image_url(request: Request, token: str) -> str:
    """The reader's image route without the image's name, which `StudyManager` appends."""
    return str(request.url_for("reader_state", token=token)) + "/images/"


@reader_router.get(
    "/v1/read/{token}", response_model=ReaderState, responses=_READER_ERRORS, name="reader_state"
)
def reader_state(token: str, request: Request, studies: deps.StudiesDep) -> ReaderState:
    """Where this reader is: the current image's random name and URL, or done."""
    return studies.state(token, _image_url(request, token))


@reader_router.get(
    "/v1/read/{token}/images/{name}",
    response_class=Response,
    responses={200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}},
               **_READER_ERRORS},
    name="reader_image",
)  # fmt: skip
def reader_image(token: str, name: str, studies: deps.StudiesDep) -> Response:
    """The current image, blinded; its time starts with the first fetch. No other image is served."""
    headers = {"Cache-Control": "no-store"}
    return Response(studies.image(token, name), media_type="image/png", headers=headers)


@reader_router.post("/v1/read/{token}/answers", response_model=ReaderState, responses=_READER_ERRORS)
def reader_answer(token: str, body: ReaderAnswer, request: Request, studies: deps.StudiesDep) -> ReaderState:
    """Answer the current image ("generated" or "real"; null when its time ran out) and get the next.
    Answers to any other image are refused: nobody goes back."""
    return studies.answer(token, body, _image_url(request, token))
