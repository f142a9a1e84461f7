"""What the benchmarks share: the gallery slice and query photos, timing helpers, a real `geoloc serve` on a free
loopback port, and a watch on how much the shared machine disturbed each phase."""

from __future__ import annotations

import csv
import os
import resource
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np

from geoloc.ingest.sources import resolve_manifest_path

ROOT = Path(__file__).resolve().parents[1]
WARMUP = 5


def stats(times: list[float]) -> dict:
    ms = np.asarray(times) * 1000
    return {"median_ms": round(float(np.median(ms)), 3), "p90_ms": round(float(np.percentile(ms, 90)), 3),
            "n": len(ms)}


def prepare(manifest: Path, n: int, work: Path) -> tuple[Path, Path]:
    """The gallery slice (absolute file names) and a query photo by a photographer outside it."""
    with manifest.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["filename"] = str(resolve_manifest_path(manifest, row["filename"]).resolve())
    gallery, rest = rows[:n], rows[n:]
    photographers = {row.get("photographer") for row in gallery}
    query = next(Path(r["filename"]) for r in rest if r.get("photographer") not in photographers)
    out = work / "gallery.csv"
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(gallery)
    return out, query


def seconds(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def alternate(measured, baseline, repeats: int) -> tuple[list[float], list[float]]:
    """Warm-up, then `measured` and `baseline` in turn, so load on the shared machine hits both alike."""
    for _ in range(WARMUP):
        measured(), baseline()
    pairs = [(seconds(measured), seconds(baseline)) for _ in range(repeats)]
    return [m for m, _ in pairs], [b for _, b in pairs]

def up(client: httpx.Client) -> bool:
    try:
        return client.get("/healthz").status_code == 200
    except httpx.TransportError:
        return False


@contextmanager
def server(env: dict, work: Path):
    """A `geoloc serve` on a free loopback port: (client, seconds until it answered, its pid)."""
    with socket.socket() as sock:  # a free loopback port
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = (work / "serve.log").open("w")
    proc = subprocess.Popen([str(ROOT / ".venv/bin/geoloc"), "serve", "--port", str(port), "--log-level",
                             "warning"], env=env, stdout=log, stderr=subprocess.STDOUT)
    start = time.perf_counter()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            while not up(client):
                if proc.poll() is not None:
                    raise RuntimeError(f"geoloc serve exited: see {work / 'serve.log'}")
                time.sleep(0.2)
            yield client, time.perf_counter() - start, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()

class Watch:
    """Per phase: wall time, the 1-min load average at its end, and the cores others used meanwhile (the machine's
    busy time in /proc/stat less this process's and its finished children's): how disturbed the phase was."""

    def __init__(self):
        self.phases: dict[str, dict] = {}

    @staticmethod
    def _cpu() -> tuple[float, float]:
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        own = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # less idle and iowait
        return busy, sum(r.ru_utime + r.ru_stime for r in own)

    @contextmanager
    def phase(self, name: str):
        (busy, own), wall = self._cpu(), time.perf_counter()
        yield
        (busy2, own2), wall = self._cpu(), time.perf_counter() - wall
        self.phases[name] = {"wall_s": round(wall, 1), "load_avg_1min": round(os.getloadavg()[0], 2),
                             "other_cores": round(max(0.0, busy2 - busy - (own2 - own)) / wall, 2)}


def locate_clients(client: httpx.Client, photos: list, clients: int, warm_up_s: float, duration: float,
                   window_opened=None) -> tuple[list[tuple[float, float, str | None]], float]:
    """`clients` threads, each POSTing one photo after another to /v1/locate for `warm_up_s` + `duration`:
    every request as (sent, seconds, failure or None), and when the measured window opened. `window_opened`,
    if given, is called as it opens."""
    done: list[tuple[float, float, str | None]] = []
    start = time.perf_counter()
    measure_from, stop_at = start + warm_up_s, start + warm_up_s + duration

    def run(i: int) -> None:
        n = i
        while (sent := time.perf_counter()) < stop_at:
            name, data = photos[n % len(photos)]
            n += clients
            try:
                response = client.post("/v1/locate", files={"photo": (name, data, "image/jpeg")})
                failure = None if response.status_code == 200 else f"{response.status_code}: {response.text[:200]}"
            except httpx.HTTPError as exc:
                failure = f"{type(exc).__name__}: {exc}"
            done.append((sent, time.perf_counter() - sent, failure))

    def open_window() -> None:
        time.sleep(max(0.0, measure_from - time.perf_counter()))
        if window_opened is not None:
            window_opened()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)] + [threading.Thread(target=open_window)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return done, measure_from


def window_latencies(done: list[tuple[float, float, str | None]], measure_from: float) -> dict:
    """Answered requests sent inside the window: their count and p50/p95/p99 in ms; errors counted anywhere."""
    ms = np.asarray([s for sent, s, failure in done if sent >= measure_from and failure is None]) * 1000
    errors = [failure for _, _, failure in done if failure is not None]
    return {"answered": int(ms.size), "errors": len(errors), "first_errors": errors[:5],
            **{f"p{q}_ms": round(float(np.percentile(ms, q)), 1) if ms.size else None for q in (50, 95, 99)},
            "max_ms": round(float(ms.max()), 1) if ms.size else None}
