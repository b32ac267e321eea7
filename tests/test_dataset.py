"""build_dataset against the real gateway (a subprocess) storing to a real S3 server (SeaweedFS): shards
are read through presigned URLs, targets are met exactly, only the deficit over a base table is made,
pooled models are asked only for labels they have, a repeated call fetches nothing (and shows what it
checked), bad labels fail before any job, the client runs with torch, onnxruntime, minio, training and
service blocked, real and synthetic rows batch together in a DataLoader, and webdataset streams a running
job's shards."""

from __future__ import annotations

import csv
import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from thoraxclient import Client, DatasetError, SyntheticDataset, build_dataset

from tests.conftest import REPO
from tests.servers import gateway, seaweedfs
from thorax.cli import main as thorax_main
from thorax.store import write_sums

pytestmark = pytest.mark.slow
KEY = "sesame"
NIH_TABLE = REPO.parent / "shared" / "data" / "nih-labels" / "Data_Entry_2017_v2020.csv.gz"


@pytest.fixture(scope="module")
def pooled_store(tiny_store: Path, tmp_path_factory) -> Path:
    """tiny/1 (the 14 NIH labels, the default) and site-b/1: the same generator whose card names COVID19
    where tiny has Hernia, so that the two label lists differ."""
    root = tmp_path_factory.mktemp("pooled") / "store"
    shutil.copytree(tiny_store, root)
    folder = root / "site-b" / "1"
    shutil.copytree(root / "tiny" / "1", folder)
    card = json.loads((folder / "model_card.json").read_text())
    rename = {"Hernia": "COVID19"}

    def swap(name: str) -> str:
        return rename.get(name, name)

    card["name"] = "site-b"
    card["labels"]["names"] = [swap(n) for n in card["labels"]["names"]]
    prior = card["label_prior"]
    prior["frequency"] = {swap(k): v for k, v in prior["frequency"].items()}
    prior["patterns"] = [{**p, "labels": [swap(n) for n in p["labels"]]} for p in prior["patterns"]]
    counts = card["training_data"]["label_counts"]
    card["training_data"]["label_counts"] = {swap(k): v for k, v in counts.items()}
    (folder / "model_card.json").write_text(json.dumps(card, indent=1))
    write_sums(folder)
    return root


@pytest.fixture(scope="module")
def gateway_url(pooled_store: Path, tmp_path_factory):
    work = tmp_path_factory.mktemp("dataset-gateway")
    with seaweedfs(work / "s3") as endpoint:
        env = {
            "THORAX_MODEL_STORE": str(pooled_store), "THORAX_S3_ENDPOINT": endpoint,
            "THORAX_S3_BUCKET": "datasets", "THORAX_S3_ACCESS_KEY": "any", "THORAX_S3_SECRET_KEY": "anything",
            "THORAX_STORAGE_PREFIX": "jobs", "THORAX_ONNX_THREADS": "1", "THORAX_API_KEYS": KEY,
            "THORAX_BATCH_SIZE": "16",
        }  # fmt: skip
        with gateway(env, work / "gateway") as (url, _):
            yield url, endpoint


class Recorder(httpx.HTTPTransport):
    """The real network, with every request's method and URL noted."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[str, str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.method, str(request.url)))
        return super().handle_request(request)

    def shard_reads(self) -> list[str]:
        return [
            url for method, url in self.requests if method == "GET" and "shard-" in url or "/shards/" in url
        ]


def recording_client(url: str) -> tuple[Client, Recorder]:
    recorder = Recorder()
    return Client(url, api_key=KEY, transport=recorder), recorder


def table_counts(path: Path, labels: list[str], synthetic: bool | None = None) -> dict[str, int]:
    with open(path, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if synthetic is None or r["synthetic"] == str(int(synthetic))]
    if rows and "Finding Labels" in rows[0]:
        return {n: sum(n in r["Finding Labels"].split("|") for r in rows) for n in labels}
    return {n: sum(r[n] == "1" for r in rows) for n in labels}


def test_targets_are_met_exactly_and_a_repeated_call_fetches_nothing(gateway_url, tmp_path: Path) -> None:
    url, s3 = gateway_url
    out = tmp_path / "ds"
    client, recorder = recording_client(url)
    with client:
        card = build_dataset(out, {"cardiomegaly": 6, "EFFUSION": 4}, seed=11, client=client, shard_size=4,
                             progress=False)  # fmt: skip
        fetched = recorder.shard_reads()
        assert len(fetched) == sum(len(j.shards) for j in card.jobs) >= 3
        assert all(u.startswith(f"http://{s3}/") and "X-Amz-Signature" in u for u in fetched)  # presigned
        assert (card.counts_after["Cardiomegaly"], card.counts_after["Effusion"]) == (6, 4)
        assert card.counts_before["Cardiomegaly"] == 0 and card.synthetic_images == 10
        names = card.label_names
        assert table_counts(out / "labels.csv", names) == card.counts_after
        assert json.loads((out / "dataset_card.json").read_text())["counts_after"] == card.counts_after

        recorder.requests.clear()
        again = build_dataset(
            out, {"Cardiomegaly": 6, "Effusion": 4}, client=client, progress=False, shard_size=4
        )  # fmt: skip  (same call, the seed taken from the first run)
        assert recorder.shard_reads() == []
        assert not [u for m, u in recorder.requests if m == "POST"]  # no job submitted again
        assert again.counts_after == card.counts_after and [j.id for j in again.jobs] == [
            j.id for j in card.jobs
        ]

    dataset = SyntheticDataset(out)
    assert len(dataset) == 10
    image, labels = dataset[0]
    assert image.dtype == np.uint8 and image.shape == (16, 16)
    assert labels.dtype == np.float32 and labels.shape == (len(names),)
    assert sum(dataset[i][1][names.index("Cardiomegaly")] for i in range(len(dataset))) == 6
    shard = next((out / "shards").rglob("shard-*.tar"))
    shard.write_bytes(b"damaged")  # a damaged shard on disk is fetched again
    with Client(url, api_key=KEY) as client:
        build_dataset(out, {"Cardiomegaly": 6, "Effusion": 4}, client=client, progress=False, shard_size=4)
    assert shard.read_bytes()[:9] != b"damaged"


def test_with_a_base_table_only_the_deficit_is_generated(gateway_url, data_dir: Path, tmp_path: Path) -> None:
    url, _ = gateway_url
    base = tmp_path / "base.csv"
    with open(data_dir / "labels.csv", newline="") as fh:
        lines = fh.readlines()[:41]  # the header and 40 real rows
    base.write_text("".join(lines))
    with open(base, newline="") as fh:
        real = list(csv.DictReader(fh))
    cardio = sum(r["Cardiomegaly"] == "1" for r in real)
    with Client(url, api_key=KEY) as client:
        card = build_dataset(tmp_path / "ds", {"Cardiomegaly": cardio + 3}, base=base, seed=2,
                             comorbidity="none", client=client, progress=False)  # fmt: skip
    assert card.synthetic_images == 3 and card.real_images == 40
    assert card.counts_after["Cardiomegaly"] == cardio + 3
    with open(tmp_path / "ds" / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[: len(real[0])] == list(real[0]) and list(rows[0])[-2:] == ["synthetic", "model"]
    assert [r["synthetic"] for r in rows] == ["0"] * 40 + ["1"] * 3
    synthetic = rows[40:]
    assert all(r["Cardiomegaly"] == "1" and r["model"] == "tiny/1" and r["patient_id"] == "synthetic"
               for r in synthetic)  # fmt: skip
    assert all(sum(r[n] == "1" for n in card.label_names) == 1 for r in synthetic)  # comorbidity="none"
    assert all((tmp_path / "ds" / r["filename"]).is_file() for r in synthetic)


def test_an_nih_layout_base_is_read_and_written_in_its_layout(gateway_url, tmp_path: Path) -> None:
    url, _ = gateway_url
    base = tmp_path / "Data_Entry_2017.csv.gz"
    with gzip.open(NIH_TABLE, "rt") as fh:
        lines = [next(fh) for _ in range(31)]
    with gzip.open(base, "wt") as fh:
        fh.write("".join(lines))
    masses = sum("Mass" in line.split(",")[1].split("|") for line in lines[1:])
    with Client(url, api_key=KEY) as client:
        card = build_dataset(tmp_path / "ds", {"mass": masses + 2}, base=base, seed=4, client=client,
                             progress=False)  # fmt: skip
    assert card.layout == "nih" and card.synthetic_images == 2
    counts = table_counts(tmp_path / "ds" / "labels.csv", card.label_names)
    assert counts["Mass"] == masses + 2 == card.counts_after["Mass"]


def test_pooled_models_are_asked_only_for_the_labels_they_have(gateway_url, tmp_path: Path) -> None:
    url, _ = gateway_url
    with Client(url, api_key=KEY) as client:
        targets = {"hernia": 4, "covid19": 3, "Mass": 6}
        models = {"tiny": 1, "site-b": 2}
        card = build_dataset(tmp_path / "ds", targets, models=models, seed=5, client=client, progress=False)
    requested = {job.model: job.requested for job in card.jobs}
    assert requested == {"tiny/1": {"Mass": 2, "Hernia": 4}, "site-b/1": {"Mass": 4, "COVID19": 3}}
    assert {m.name: m.labels[-1] for m in card.models} == {"tiny": "Hernia", "site-b": "COVID19"}
    assert all(len(m.card_sha256) == 64 for m in card.models)
    assert (card.counts_after["Hernia"], card.counts_after["COVID19"], card.counts_after["Mass"]) == (4, 3, 6)
    with open(tmp_path / "ds" / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["model"] for r in rows if r["Hernia"] == "1"} == {"tiny/1"}
    assert {r["model"] for r in rows if r["COVID19"] == "1"} == {"site-b/1"}
    assert {r["model"] for r in rows if r["Mass"] == "1"} == {"tiny/1", "site-b/1"}


def test_unknown_or_missing_labels_fail_before_any_job(gateway_url, tmp_path: Path) -> None:
    url, _ = gateway_url
    with Client(url, api_key=KEY) as client:
        before = len(client.jobs())
        with pytest.raises(DatasetError, match="unknown label 'Covid-19'"):
            build_dataset(tmp_path / "a", {"Covid-19": 5}, client=client, progress=False)
        with pytest.raises(DatasetError, match="unknown label 'COVID19'"):  # tiny has no COVID19
            build_dataset(tmp_path / "b", {"COVID19": 5}, models=["tiny"], client=client, progress=False)
        with pytest.raises(DatasetError, match="name at least one label"):
            build_dataset(tmp_path / "c", {}, client=client, progress=False)
        with pytest.raises(DatasetError, match="no model 'nope'"):
            build_dataset(tmp_path / "d", {"Mass": 1}, models=["nope"], client=client, progress=False)
        assert len(client.jobs()) == before
    assert not (tmp_path / "a").exists()


def test_the_command_line_builds_a_uniform_dataset(gateway_url, tmp_path: Path, capsys) -> None:
    url, _ = gateway_url
    base = tmp_path / "labels.csv"
    labels = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
              "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
              "Hernia"]  # fmt: skip
    rows = [
        ["filename", "patient_id", "source", "view", *labels],
        ["a.png", "p1", "x", "PA", *([0] * 14)],
        ["b.png", "p2", "x", "PA", 1, 1, *([0] * 12)],
        ["c.png", "p3", "x", "PA", 1, *([0] * 13)],
    ]
    base.write_text("".join(",".join(map(str, r)) + "\n" for r in rows))
    out = tmp_path / "ds"
    argv = ["dataset", "build", str(out), "--uniform", "--base", str(base), "--seed", "3", "--url", url,
            "--api-key", KEY, "--quiet", "--comorbidity", "none"]  # fmt: skip
    assert thorax_main(argv) == 0
    assert "3 real + 25 synthetic images" in capsys.readouterr().out
    assert table_counts(out / "labels.csv", labels) == dict.fromkeys(labels, 2)
    assert thorax_main(["dataset", "build", str(out), "--rebalance", "Mass=1", "--url", url]) == 2
    assert "401 Unauthorized: a valid API key is needed" in capsys.readouterr().err  # one line, no traceback
    other = ["dataset", "build", str(out), "--rebalance", "Mass=1", "--url", url, "--api-key", KEY]
    assert thorax_main(other) == 2
    assert "built with other arguments" in capsys.readouterr().err


BLOCKED_RUN = """
import importlib.abc, json, sys
BLOCKED = {"torch", "onnxruntime", "minio", "training", "service", "thorax", "PIL"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Block())
import thoraxclient
from thoraxclient import Client, SyntheticDataset, build_dataset
url, key, out = sys.argv[1:4]
with Client(url, api_key=key) as client:
    card = build_dataset(out, {"Pneumothorax": 3}, seed=8, client=client, progress=False)
    samples = list(client.iter_samples(card.jobs[0].id))
dataset = SyntheticDataset(out)
image, labels = dataset[len(dataset) - 1]
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print(json.dumps({"after": card.counts_after["Pneumothorax"], "n": len(dataset), "shape": list(image.shape),
                  "samples": len(samples), "loaded": loaded}))
"""


def test_the_client_runs_with_only_its_own_dependencies(gateway_url, tmp_path: Path) -> None:
    url, _ = gateway_url
    result = subprocess.run(
        [sys.executable, "-c", BLOCKED_RUN, url, KEY, str(tmp_path / "ds")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"after": 3, "n": 3, "shape": [16, 16], "samples": 3, "loaded": []}


def test_large_requests_are_cut_into_several_jobs_and_read_by_a_dataloader(
    gateway_url, tmp_path: Path, monkeypatch
) -> None:
    import torch.utils.data
    from thoraxclient import dataset as dataset_module

    monkeypatch.setattr(dataset_module, "MAX_IMAGES_PER_JOB", 3)
    url, _ = gateway_url
    with Client(url, api_key=KEY) as client:
        card = build_dataset(tmp_path / "ds", {"Nodule": 7}, seed=6, client=client, progress=False)
    assert [j.count for j in card.jobs] == [3, 3, 1] and len({j.seed for j in card.jobs}) == 3
    assert sum(j.requested["Nodule"] for j in card.jobs) == 7 == card.counts_after["Nodule"]
    loader = torch.utils.data.DataLoader(SyntheticDataset(tmp_path / "ds"), batch_size=4)
    batches = list(loader)
    assert [tuple(images.shape) for images, _ in batches] == [(4, 16, 16), (3, 16, 16)]
    nodule = card.label_names.index("Nodule")
    assert sum(int(labels[:, nodule].sum()) for _, labels in batches) == 7


def test_a_dicom_dataset_reads_the_same_pixels_as_the_png_one(gateway_url, tmp_path: Path) -> None:
    url, _ = gateway_url
    datasets = {}
    with Client(url, api_key=KEY) as client:
        for fmt in ("png", "dicom"):
            build_dataset(tmp_path / fmt, {"Effusion": 3}, seed=5, format=fmt, client=client, progress=False)
            datasets[fmt] = SyntheticDataset(tmp_path / fmt)
    assert len(datasets["dicom"]) == len(datasets["png"]) == 3
    assert next((tmp_path / "dicom" / "images").rglob("*.dcm"))
    for (png, png_labels), (dcm, dcm_labels) in zip(datasets["png"], datasets["dicom"], strict=True):
        assert dcm.dtype == np.uint8 and np.array_equal(dcm, png) and np.array_equal(dcm_labels, png_labels)


def test_a_mixed_real_and_synthetic_dataset_batches_with_a_dataloader(
    gateway_url, data_dir: Path, tmp_path: Path
) -> None:
    import torch.utils.data
    from PIL import Image

    url, _ = gateway_url
    base = tmp_path / "base.csv"
    with open(data_dir / "labels.csv", newline="") as fh:
        base.write_text("".join(fh.readlines()[:21]))  # the header and 20 real rows (256 px)
    with open(base, newline="") as fh:
        real = list(csv.DictReader(fh))
    mass = sum(r["Mass"] == "1" for r in real)
    with Client(url, api_key=KEY) as client:
        card = build_dataset(tmp_path / "ds", {"Mass": mass + 5}, base=base, seed=3, client=client,
                             progress=False)  # fmt: skip
    with pytest.raises(DatasetError, match=r"real_root=, the data folder that holds images/"):
        SyntheticDataset(tmp_path / "ds", include_real=True)  # base.csv has no images beside it

    mixed = SyntheticDataset(tmp_path / "ds", include_real=True, real_root=data_dir)  # the data folder
    assert (len(mixed), mixed.real_images, mixed.synthetic_images, mixed.resolution) == (25, 20, 5, 16)
    batches = list(torch.utils.data.DataLoader(mixed, batch_size=8))
    assert [tuple(images.shape) for images, _ in batches] == [(8, 16, 16)] * 3 + [(1, 16, 16)]
    assert all(images.dtype == torch.uint8 and labels.dtype == torch.float32 for images, labels in batches)
    column = card.label_names.index("Mass")
    assert sum(int(labels[:, column].sum()) for _, labels in batches) == mass + 5 == card.counts_after["Mass"]

    original = np.asarray(Image.open(data_dir / "images" / real[0]["filename"]), np.float64)  # [256, 256]
    expected = np.rint(original.reshape(16, 16, 16, 16).mean(axis=(1, 3)))  # the area average
    np.testing.assert_array_equal(mixed[0][0], expected)
    by_images = SyntheticDataset(tmp_path / "ds", include_real=True, real_root=data_dir / "images")
    np.testing.assert_array_equal(by_images[0][0], mixed[0][0])
    larger = SyntheticDataset(tmp_path / "ds", include_real=True, real_root=data_dir, resolution=32)
    images, _ = next(iter(torch.utils.data.DataLoader(larger, batch_size=25)))
    assert tuple(images.shape) == (25, 32, 32)
    assert len(SyntheticDataset(tmp_path / "ds")) == 5  # the synthetic rows only, by default


def test_the_data_folder_of_the_base_table_is_found_by_default(gateway_url, data_dir: Path, tmp_path: Path):
    url, _ = gateway_url
    hernia = table_counts(data_dir / "labels.csv", ["Hernia"])["Hernia"]
    with Client(url, api_key=KEY) as client:  # the README's call: the base table in its data folder
        card = build_dataset(tmp_path / "ds", {"Hernia": hernia + 2}, base=data_dir / "labels.csv", seed=1,
                             comorbidity="none", client=client, progress=False)  # fmt: skip
    assert card.synthetic_images == 2
    dataset = SyntheticDataset(tmp_path / "ds", include_real=True)
    assert dataset.real_root.resolve() == (data_dir / "images").resolve()  # the card records a resolved path
    assert dataset.real_images == card.real_images
    assert len(dataset) == card.real_images + card.synthetic_images
    assert dataset[0][0].shape == dataset[len(dataset) - 1][0].shape == (16, 16)


def test_webdataset_streams_the_shards_of_a_running_job(gateway_url) -> None:
    import itertools

    import webdataset as wds
    from thoraxclient.shards import decode_png

    url, s3 = gateway_url
    with Client(url, api_key=KEY) as client:
        # far more images than are read: the job is still running when the first shards have been read
        job = client.generate(1_000_000, {"Effusion": 1}, seed=12, shard_size=25, prefix="streamed")
        try:
            shards = client.committed_shards(job, timeout=120)
            pipeline = wds.DataPipeline(lambda: ({"url": e.url} for e in shards), wds.tarfile_to_samples())
            samples = list(itertools.islice(pipeline, 100))  # four shards, read through presigned URLs
            during = client.job(job)
        finally:
            client.cancel(job)
    assert during.state == "running" and during.images_done < during.count
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(100)]
    records = [json.loads(s["json"]) for s in samples]
    assert all(r["labels"]["Effusion"] == 1.0 and r["seed"] == 12 for r in records)
    assert [r["index"] for r in records] == list(range(100))
    assert decode_png(samples[0]["png"]).shape == (16, 16)


def test_the_download_after_the_job_has_a_bar_and_a_rerun_checks_every_file(
    gateway_url, tmp_path: Path, capsys
) -> None:
    url, _ = gateway_url
    out = tmp_path / "ds"
    with Client(url, api_key=KEY) as client:
        card = build_dataset(out, {"Edema": 5}, seed=9, client=client, shard_size=2, progress=True)
        first = capsys.readouterr().err.replace("\r", "\n")
        image = next((out / "images").rglob("*.png"))
        original = image.read_bytes()
        image.write_bytes(bytes(len(original)))  # damaged, same size: found by its bytes
        build_dataset(out, {"Edema": 5}, client=client, shard_size=2, progress=True)
        again = capsys.readouterr().err.replace("\r", "\n")
    from tqdm import tqdm

    job = card.jobs[0].id[:8]
    size = tqdm.format_sizeof(sum(p.stat().st_size for p in (out / "shards").rglob("shard-*.tar")), "", 1024)
    assert f"shards {job}: 100%" in first and f"{size}/{size}" in first  # the shards' bytes
    assert "B/s, 3/3 shards, 0 checked on disk]" in first
    assert f"images {job}: 100%" in first and "5/5" in first
    assert "3/3 shards, 3 checked on disk]" in again and "0 checked" not in again
    assert image.read_bytes() == original
