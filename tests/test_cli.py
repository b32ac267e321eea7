"""The `thorax` command as a user runs it: one-line errors with exit code 2, and `thorax sample`."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO
from thorax.latents import latent_for, latents_for
from training.config import load_config
from training.train import RunOptions, train


def thorax(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "thorax.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--bogus"], "unrecognized arguments: --bogus"),
        (["train", "--config", "nope"], "no config 'nope'"),
        (
            ["train", "--data", "/nonexistent/folder", "--run-dir", "RUN"],
            "data folder /nonexistent/folder does not exist",
        ),
        (["train", "--limit-images", "0"], "must be at least 1"),
        (["sample", "--model", "no-such-model"], "no model 'no-such-model'"),
        (["sample", "--label", "Cardiomegaly=2"], "the value must be in 0..1"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["generate", "--label", "Nope", "--out", "RUN"], "labels.Nope: unknown label 'Nope'"),
        (["generate", "--shard-size", "0"], "must be at least 1"),
        (["evaluate", "--checks", "speed"], "choose from memorisation, classifier, pictures"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(args: list[str], message: str, tmp_path: Path) -> None:
    args = [str(tmp_path / "run") if a == "RUN" else a for a in args]
    result = thorax(*args)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("thorax: error: "), result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def tiny_generator(tmp_path_factory, data_dir: Path) -> Path:
    run_dir = tmp_path_factory.mktemp("tiny")
    train(load_config("tiny"), RunOptions(run_dir, data_dir, limit_images=32, quiet=True))
    return run_dir / "generator"


def test_sample_writes_pngs_with_their_labels_and_repeats_exactly(
    tmp_path: Path, tiny_generator: Path
) -> None:
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    for out, batch in ((out_a, "4"), (out_b, "3")):  # the batch size must not change any image
        result = thorax(
            "sample",
            "--model",
            str(tiny_generator),
            "--count",
            "5",
            "--seed",
            "7",
            "--label",
            "cardiomegaly",
            "--label",
            "Effusion=0.5",
            "--out",
            str(out),
            "--batch",
            batch,
        )
        assert result.returncode == 0, result.stderr
    files = sorted(out_a.glob("*.png"))
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(5)]
    for f in files:
        with Image.open(f) as im:
            assert im.format == "PNG" and im.mode == "L" and im.size == (16, 16)
        assert (
            hashlib.sha256(f.read_bytes()).digest() == hashlib.sha256((out_b / f.name).read_bytes()).digest()
        )
    rows = [json.loads(line) for line in (out_a / "samples.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(5))
    assert rows[0]["labels"]["Cardiomegaly"] == 1.0 and rows[0]["labels"]["Effusion"] == 0.5
    assert rows[0]["labels"]["Hernia"] == 0.0
    # another seed gives other images
    other = thorax(
        "sample", "--model", str(tiny_generator), "--count", "1", "--seed", "8", "--out", str(tmp_path / "c")
    )
    assert other.returncode == 0
    assert (tmp_path / "c" / "000000.png").read_bytes() != (out_a / "000000.png").read_bytes()


def test_sample_previews_a_label_guidance_and_refuses_a_bad_one(tmp_path: Path, tiny_generator: Path) -> None:
    def sample(out: str, *extra: str) -> subprocess.CompletedProcess:
        return thorax("sample", "--model", str(tiny_generator), "--count", "2", "--seed", "3",
                      "--out", str(tmp_path / out), *extra)  # fmt: skip

    assert sample("plain", "--label", "Cardiomegaly").returncode == 0
    assert sample("guided", "--label", "Cardiomegaly", "--label-guidance", "3").returncode == 0
    assert sample("healthy").returncode == 0
    assert sample("healthy-guided", "--label-guidance", "3").returncode == 0
    png = "000000.png"
    assert (tmp_path / "guided" / png).read_bytes() != (tmp_path / "plain" / png).read_bytes()
    assert (tmp_path / "healthy-guided" / png).read_bytes() == (tmp_path / "healthy" / png).read_bytes()
    row = json.loads((tmp_path / "guided" / "samples.jsonl").read_text().splitlines()[0])
    assert row["label_guidance"] == 3.0
    bad = sample("bad", "--label-guidance", "0")
    assert bad.returncode == 2 and "--label-guidance" in bad.stderr and not (tmp_path / "bad").exists()
    assert sample("placed", "--label", "Cardiomegaly", "--label-guidance", "input=2").returncode == 0
    assert (tmp_path / "placed" / png).read_bytes() not in {
        (tmp_path / p / png).read_bytes() for p in ("plain", "guided")
    }
    row = json.loads((tmp_path / "placed" / "samples.jsonl").read_text().splitlines()[0])
    assert row["label_guidance"] == {"input": 2.0}
    for wrong, why in [("8=x", "is not PLACE=NUMBER"), ("8=2", "labels enter at the input only")]:
        refused = sample("refused", "--label-guidance", wrong)
        assert refused.returncode == 2 and why in refused.stderr and not (tmp_path / "refused").exists()
    for wrong, why in [("0", "must be a number above 0"), ("1.5", "no label_variation")]:  # tiny: fixed
        refused = sample("refused", "--label-variation-scale", wrong)
        assert refused.returncode == 2 and why in refused.stderr and not (tmp_path / "refused").exists()
    assert (
        json.loads((tmp_path / "plain" / "samples.jsonl").read_text().splitlines()[0])[
            "label_variation_scale"
        ]
        == 1.0
    )


def test_latents_are_keyed_by_seed_and_index_not_by_batch() -> None:
    whole = latents_for(3, range(10), 32)
    assert np.array_equal(whole[7], latent_for(3, 7, 32))
    assert np.array_equal(latents_for(3, [7, 2], 32), whole[[7, 2]])
    assert not np.array_equal(latent_for(3, 7, 32), latent_for(4, 7, 32))
    assert abs(float(latents_for(0, range(2000), 16).std()) - 1.0) < 0.03


def test_generate_writes_shards_in_process_and_resumes_after_a_kill(tiny_store: Path, tmp_path: Path) -> None:
    """`thorax generate` runs the gateway's job code without a server; SIGKILLed mid-job, `--resume`
    finishes it with exactly the images asked for, keeping the shards already written."""
    import signal
    import time

    from tests.gateway_helpers import read_with_webdataset

    out, count, shard_size = tmp_path / "out", 12000, 600
    env = {**os.environ, "OMP_NUM_THREADS": "1", "THORAX_MODEL_STORE": str(tiny_store)}
    command = [sys.executable, "-m", "thorax.cli", "generate", "--count", str(count), "--seed", "4",
               "--shard-size", str(shard_size), "--label", "Edema=0.5", "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not list(out.glob("*/shard-000001.tar")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    (job,) = [p for p in out.iterdir() if p.name != ".thorax"]  # .thorax: the job index
    before = {p.name: p.read_bytes() for p in job.glob("shard-*.tar")}
    assert before and not (job / "manifest.json").exists(), "killed before the job finished"

    resumed = subprocess.run([sys.executable, "-m", "thorax.cli", "generate", "--resume", "--out", str(out)],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"job {job.name} succeeded: {count} images" in resumed.stdout
    manifest = json.loads((job / "manifest.json").read_text())
    assert manifest["images"] == count and len(manifest["shards"]) == count // shard_size
    for name, data in before.items():  # the shards written before the kill were kept as they were
        assert (job / name).read_bytes() == data
    samples = read_with_webdataset(sorted(job.glob("shard-*.tar"))[:2])
    assert len(samples) == 2 * shard_size and samples[0]["json"]["labels"]["Edema"] == 0.5
    again = thorax("generate", "--resume", "--out", str(out))
    assert again.returncode == 0 and "nothing to resume" in again.stdout
