"""Real service processes for the integration tests, on free loopback ports: redis-server, Celery
workers and the API under uvicorn, each started and stopped by a fixture, with its log kept for failures.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
INTERNAL_TOKEN = "integration-internal-token"  # the API lends its gallery to the workers that present it
DATA = (REPO / ".." / "shared" / "data" / "im2gps3k-dev").resolve()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check: Callable[[], object], timeout_s: float, what: str, poll_s: float = 0.2):
    """Poll `check` until it returns something truthy; the timeout only guards against a hang."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {timeout_s:.0f} s")
        time.sleep(poll_s)


def manifest_rows(n: int) -> list[dict]:
    if not (DATA / "manifest.csv").exists():
        pytest.skip(f"real photos not found at {DATA}")
    with open(DATA / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))[:n]


class Service:
    """A process in its own session (so SIGKILL reaches its children too), logging to a file."""

    def __init__(self, name: str, argv: list[str], env: dict, log_dir: Path):
        self.name = name
        self.log = log_dir / f"{name}.log"
        self._log_handle = open(self.log, "ab")
        self.process = subprocess.Popen(argv, env=env, cwd=REPO, stdout=self._log_handle,
                                        stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL to the whole process group: no shutdown handler runs, nothing is acknowledged."""
        if self.alive():
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self._log_handle.close()

    def stop(self) -> None:
        if self.alive():
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self._log_handle.close()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (scripts/test.sh installs it): "
                    "the worker integration tests need a real broker")
    import redis

    port = free_port()
    directory = tmp_path_factory.mktemp("redis")
    server = Service("redis", [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(directory)], dict(os.environ), directory)
    client = redis.Redis(port=port)

    def ping():
        try:
            return client.ping()
        except redis.ConnectionError:
            assert server.alive(), f"redis-server exited:\n{server.log_tail()}"
            return False

    wait_until(ping, 30, "redis-server to answer")
    yield f"redis://127.0.0.1:{port}/0"
    client.close()
    server.stop()


@pytest.fixture(params=["file", "redis"])
def store(request, tmp_path):
    """Each job store in turn: files under a fresh folder, and Redis (with no jobs left open by other tests)."""
    from geoloc import job_store

    if request.param == "file":
        yield job_store.FileJobStore(tmp_path / "jobs")
        return
    import redis

    client = redis.Redis.from_url(request.getfixturevalue("redis_url"), decode_responses=True)
    client.delete(job_store.RedisJobStore.OPEN)
    yield job_store.RedisJobStore(client)
    client.close()


def service_env(home: Path, redis_url: str, **overrides) -> dict:
    """The environment of the API: one data home, one broker, one CPU thread, the internal secret."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEOLOC_")}
    env.update({
        "GEOLOC_HOME": str(home),
        "GEOLOC_BROKER_URL": redis_url,
        "GEOLOC_DEVICE": "cpu",
        "GEOLOC_IMPORT_ROOTS": str(DATA),
        "GEOLOC_INTERNAL_TOKEN": INTERNAL_TOKEN,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    })
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def beside(env: dict) -> dict:
    """The environment of a worker or command beside the API serving on the same data home: the gallery is
    the API's."""
    return {**env, "GEOLOC_GALLERY_VIA_API": "1"}


def sessions_files(leader: int, under: Path) -> set[str]:
    """The files under `under` that a process's session (it and its children) holds open or mapped."""
    held = set()
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or int((proc / "stat").read_text().rsplit(")", 1)[1].split()[3]) != leader:
                continue
            paths = [os.readlink(fd) for fd in (proc / "fd").iterdir()]
            paths += [line.split(None, 5)[-1] for line in (proc / "maps").read_text().splitlines()
                      if len(line.split(None, 5)) == 6]
        except (OSError, IndexError, ValueError):  # a process that ended meanwhile
            continue
        held |= {path for path in paths if path.startswith(str(under))}
    return held


def geoloc(*args: str) -> list[str]:
    return [sys.executable, "-m", "geoloc.cli", *args]


def start_worker(env: dict, log_dir: Path, name: str = "worker") -> Service:
    return Service(name, geoloc("worker", "--concurrency", "1", "--log-level", "info"), env, log_dir)


def start_api(env: dict, log_dir: Path, port: int | None = None) -> tuple[Service, str]:
    port = port or free_port()
    api = Service("api", geoloc("serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"),
                  env, log_dir)
    url = f"http://127.0.0.1:{port}"

    def healthy():
        assert api.alive(), f"the API exited:\n{api.log_tail()}"
        try:
            return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(healthy, 180, "the API to start")  # imports torch and loads the model first
    return api, url
