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
