from __future__ import annotations

import os
from pathlib import Path

import pytest

try:  # the tiny test networks gain nothing from threads, and a second busy thread pool halves the speed
    import torch  # of anything else running on this 2-core machine (a training run, a CI neighbour)

    torch.set_num_threads(1)
except ImportError:  # a client-only environment
    pass

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("THORAX_TEST_DATA", REPO.parent / "shared" / "data" / "cxr256"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA / "labels.csv").is_file():
        pytest.fail(f"the real radiographs are missing: {DATA} (set THORAX_TEST_DATA)")
    return DATA


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, data_dir: Path) -> Path:
    """A finished run of the tiny config (16 px, a few channels) on 64 real training images."""
    from training.config import load_config
    from training.train import RunOptions, train

    run = tmp_path_factory.mktemp("tiny-run")
    train(load_config("tiny"), RunOptions(run, data_dir, limit_images=64, quiet=True))
    return run


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory, tiny_run: Path) -> Path:
    """A model store holding that run exported as `tiny/1`, its default model. Treat it as read-only."""
    from training.export import export_model

    root = tmp_path_factory.mktemp("store")
    export_model(tiny_run, "tiny", "1", store=root, make_default=True)
    return root


@pytest.fixture(scope="module")
def tiny_store_env(tiny_store: Path):
    """THORAX_MODEL_STORE pointed at the tiny store for a module's tests (gateways made in-process)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("THORAX_MODEL_STORE", str(tiny_store))
        yield tiny_store
