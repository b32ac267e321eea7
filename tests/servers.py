"""Real servers for integration tests, started on loopback ports and stopped afterwards."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@contextmanager
def torchserve(mar: Path, workdir: Path, start_timeout: float = 120.0):
    """TorchServe serving one .mar on 127.0.0.1; yields the inference base URL, e.g. http://127.0.0.1:PORT.

    Needs Java and `torchserve` in this Python's environment (its worker imports yaml and psutil).
    """
    bin_dir = Path(sys.executable).parent
    executable = shutil.which("torchserve", path=str(bin_dir)) or shutil.which("torchserve")
    if executable is None:
        raise RuntimeError("torchserve is not installed in this environment")
    store = workdir / "store"
    store.mkdir(parents=True)
    shutil.copy(mar, store / mar.name)
    inference, management, metrics = free_port(), free_port(), free_port()
    config = workdir / "config.properties"
    config.write_text(
        f"inference_address=http://127.0.0.1:{inference}\n"
        f"management_address=http://127.0.0.1:{management}\n"
        f"metrics_address=http://127.0.0.1:{metrics}\n"
        "disable_token_authorization=true\n"
        "enable_envvars_config=false\n"
        "install_py_dep_per_model=false\n"
        "default_workers_per_model=1\n"
    )
    env = {
        **os.environ,
        "LOG_LOCATION": str(workdir / "logs"),
        "METRICS_LOCATION": str(workdir / "logs"),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "OMP_NUM_THREADS": "1",
        "THORAX_TORCH_THREADS": "1",
    }
    name = mar.stem
    cmd = [
        executable, "--start", "--foreground", "--ncs", "--disable-token-auth",
        "--model-store", str(store), "--models", f"{name}={mar.name}", "--ts-config", str(config),
    ]  # fmt: skip
    log = open(workdir / "torchserve.out", "wb")
    proc = subprocess.Popen(
        cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"torchserve exited: {(workdir / 'torchserve.out').read_text()[-3000:]}")
            try:
                status, body = _get(f"http://127.0.0.1:{management}/models/{name}")
                if status == 200 and json.loads(body)[0]["workers"][0]["status"] == "READY":
                    break
            except (OSError, KeyError, IndexError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"torchserve not ready: {(workdir / 'torchserve.out').read_text()[-3000:]}"
                )
            time.sleep(0.5)
        yield f"http://127.0.0.1:{inference}"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
