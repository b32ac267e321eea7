"""Progress as a user watches it: the images made (encoded) and the images committed in shards, told apart
in the API's job status, the SDK's progress bar and `thorax generate`'s lines. A job of one shard shows
the difference best: its images are made one batch after another, but the shard commits only when whole.

The shipped model, no torch: .ci/run runs these on Python 3.13 too."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from thoraxclient import Client
from thoraxclient.schemas import TERMINAL_STATES

from service.app import create_app
from service.settings import Settings
from tests.conftest import REPO
from tests.in_process import InProcessTransport

COUNT = 200  # one shard of 200: a few seconds of the shipped model on one core


@pytest.fixture
def sdk(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("THORAX_MODEL_STORE", str(REPO / "model_store"))
    settings = Settings(storage_dir=tmp_path / "data", batch_size=8, onnx_threads=1)
    with TestClient(create_app(settings)) as test_client:
        with Client("http://testserver", transport=InProcessTransport(test_client)) as client:
            yield client


def test_the_status_counts_images_made_before_their_shard_commits(sdk: Client) -> None:
    status = sdk.generate(COUNT, {"Cardiomegaly": 1}, seed=2, shard_size=COUNT)
    seen = []
    while status.state not in TERMINAL_STATES:
        time.sleep(0.02)
        status = sdk.job(status)
        seen.append((status.images_made, status.images_done))
    assert status.state == "succeeded" and seen[-1] == (COUNT, COUNT)
    assert any(0 < made < COUNT and done == 0 for made, done in seen), seen  # made moves, the shard waits
    assert all(made >= done for made, done in seen)
    assert [made for made, _ in seen] == sorted(made for made, _ in seen)  # never backwards


def test_the_progress_bar_shows_images_made_and_in_shards(sdk: Client, capsys) -> None:
    job = sdk.generate(COUNT, seed=3, shard_size=COUNT)
    sdk.wait(job, progress=True, poll_interval=0.02)
    frames = [f.strip() for f in re.split(r"[\r\n]", capsys.readouterr().err) if f.strip()]
    shown = [re.search(rf"\| *(\d+)/{COUNT} .*, (\d+) in shards \((\d)/1\)\]", f) for f in frames]
    pairs = [tuple(int(g) for g in m.groups()) for m in shown if m]
    assert pairs and pairs[-1] == (COUNT, COUNT, 1), frames
    assert any(0 < made < COUNT and done == 0 for made, done, _ in pairs), frames


def test_thorax_generate_prints_images_made_and_in_shards(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "THORAX_MODEL_STORE": str(REPO / "model_store"),
           "THORAX_BATCH_SIZE": "8"}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "thorax.cli", "generate", "--count", str(COUNT), "--shard-size", str(COUNT),
         "--progress-every", "0.1", "--out", str(tmp_path / "out")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    lines = re.findall(rf"(\d+)/{COUNT} images made, (\d+) in shards", result.stdout)
    pairs = [(int(made), int(done)) for made, done in lines]
    assert any(0 < made < COUNT and done == 0 for made, done in pairs), result.stdout
    assert f"succeeded: {COUNT} images" in result.stdout
