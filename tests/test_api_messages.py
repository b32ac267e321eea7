"""The gateway's answers to the mistakes a new user makes with curl: malformed JSON (where, by line and
column), a body without `content-type: application/json` (the header named), and `GET /` (a pointer to
/docs and the console instead of a 404). The shipped model, no torch: .ci/run runs these on 3.13 too."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.conftest import REPO

KEY = "sesame"
JSON = {"content-type": "application/json", "authorization": f"Bearer {KEY}"}
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


@pytest.fixture
def client(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("THORAX_MODEL_STORE", str(REPO / "model_store"))
    settings = Settings(storage_dir=tmp_path / "data", onnx_threads=1, api_keys=KEY)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.mark.parametrize(
    "body, where",
    [
        (b'{"count": 1, x}', "line 1, column 14"),
        (b'{"count": 1,', "line 1, column 13"),
        (b'{\n  "count": 1,\n  "seed": 01\n}', "line 3, column 12"),
    ],
)
def test_malformed_json_is_located_by_line_and_column(client: TestClient, body: bytes, where: str) -> None:
    for path in ("/generate", "/v1/preview"):
        problem = client.post(path, content=body, headers=JSON)
        assert problem.status_code == 422 and problem.headers["content-type"] == "application/problem+json"
        assert problem.json()["detail"].startswith(f"body: invalid JSON at {where} (")
        assert problem.json()["errors"] == [{"field": "body", "message": problem.json()["detail"][6:]}]
    assert not list((client.app.state.settings.storage_dir).rglob("job.json"))  # nothing started


@pytest.mark.parametrize("content_type, sent", [(None, "none"), ("text/plain", "text/plain")])
def test_a_body_without_the_json_content_type_names_the_header(
    client: TestClient, content_type: str | None, sent: str
) -> None:
    headers = {"authorization": f"Bearer {KEY}"} | ({"content-type": content_type} if content_type else {})
    for path in ("/generate", "/v1/preview", "/v1/visualize"):
        problem = client.post(path, content=b'{"count": 1}', headers=headers)
        assert problem.status_code == 422, problem.text
        message = f"must be application/json for a JSON body; this request sent {sent}"
        assert problem.json()["errors"] == [{"field": "content-type", "message": message}]
        assert problem.json()["detail"] == f"content-type: {message}"
    accepted = client.post("/generate", content=b'{"count": 1}', headers=JSON | {"content-type":
                           "application/json; charset=utf-8"})  # fmt: skip
    assert accepted.status_code == 202, accepted.text
    wrong_shape = client.post("/generate", content=b"[1]", headers=JSON)  # JSON, but not an object
    assert wrong_shape.status_code == 422 and wrong_shape.json()["errors"][0]["field"] == "body"


def test_the_root_points_to_the_docs_and_the_console(client: TestClient) -> None:
    links = client.get("/")  # no key needed: it names nothing of the deployment
    assert links.status_code == 200 and links.headers["content-type"] == "application/json"
    assert links.json()["docs"] == "/docs" and links.json()["console"] == "/console/"
    page = client.get("/", headers={"accept": BROWSER_ACCEPT})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<a href="/docs">' in page.text and '<a href="/console/">' in page.text
    assert client.get("/docs").status_code == 401  # the pages it points to keep their key
    assert client.get("/docs", headers=JSON).status_code == 200
    schema = client.get("/openapi.json", headers=JSON).json()
    documented = schema["paths"]["/"]["get"]["responses"]["200"]["content"]
    assert set(documented) == {"application/json", "text/html"}
