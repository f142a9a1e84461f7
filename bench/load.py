"""Soak: the API under concurrent clients on /v1/locate for a minute, with the server's memory watched.

    .venv/bin/python bench/load.py [--clients 16] [--seconds 60] [--gallery 500] [--queries 64]

A fresh `geoloc serve` (uvicorn) on a free loopback port (GEOLOC_REQUIRE_KEYS=0), over a gallery of the dev
manifest's first --gallery photos indexed into a fresh GEOLOC_HOME. --clients threads each POST one real dev
photo after another (taken by photographers the gallery lacks) for --seconds, after a warm-up. Reported:
requests sent in the measured window, errors over the whole run (any status but 200, or a failed
connection: there must be none), throughput (answers/s), p50/p95/p99 latency, and the server's resident
memory (VmRSS of its process and any children, sampled every second): once it accepts connections, when the
measured window opens, at its end, the peak, and the medians of the window's first and last quarters.
The clients run on the same cores as the server. Results: bench/results/load.json (or --out), with how
much the shared machine disturbed each phase (`other_cores`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness import Watch, locate_clients, prepare, server, window_latencies  # noqa: E402
from bench.throughput import query_photos  # noqa: E402
from geoloc.indexing import index_source  # noqa: E402
from geoloc.runtime import Runtime  # noqa: E402
from geoloc.settings import Settings  # noqa: E402

WARM_UP_S = 5.0


def _children(pid: int) -> list[int]:
    pids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            pids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return pids


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MiB (from /proc/PID/status)."""
    total_kb, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            continue
        total_kb += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
        todo += _children(current)
    return round(total_kb / 1024, 1)


class Memory:
    """The server's resident memory, sampled every `every_s` seconds on a thread, with labelled marks."""

    def __init__(self, pid: int, every_s: float = 1.0):
        self.pid, self.every_s, self.samples, self.marks, self.at = pid, every_s, [], {}, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start = time.perf_counter()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()

    def sample(self) -> float:
        rss = tree_rss_mb(self.pid)
        self.samples.append((round(time.perf_counter() - self._start, 1), rss))
        return rss

    def mark(self, name: str) -> None:
        self.marks[name] = self.sample()
        self.at[name] = self.samples[-1][0]

    def drift(self, start: str, end: str) -> dict:
        """Median RSS over the first and the last quarter of the samples between two marks: whether memory
        creeps, robust to the swings of the batches in flight."""
        window = [rss for t, rss in self.samples if self.at[start] <= t <= self.at[end]]
        quarter = max(1, len(window) // 4)
        first, last = float(np.median(window[:quarter])), float(np.median(window[-quarter:]))
        return {"first_quarter_median": round(first, 1), "last_quarter_median": round(last, 1),
                "growth": round(last - first, 1)}

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *_):
        self._stop.set()
        self._thread.join()


def soak(client: httpx.Client, photos: list, clients: int, duration: float, memory: Memory) -> dict:
    """`clients` threads, each POSTing one photo after another. Requests sent inside the measured window give
    the rate and latencies; an error anywhere, warm-up included, counts."""
    done, measure_from = locate_clients(client, photos, clients, WARM_UP_S, duration,
                                        lambda: memory.mark("window_open"))
    memory.mark("window_end")
    latencies = window_latencies(done, measure_from)
    return {"clients": clients, "seconds": duration, "requests": sum(sent >= measure_from for sent, _, _ in done),
            "requests_all": len(done), "requests_per_s": round(latencies.pop("answered") / duration, 2), **latencies}


def run(args, work: Path) -> dict:
    env = dict(os.environ, GEOLOC_HOME=str(work / "home"), GEOLOC_REQUIRE_KEYS="0")
    os.environ["GEOLOC_HOME"] = env["GEOLOC_HOME"]  # Settings() reads it
    manifest = Path(args.manifest)
    gallery_csv, _ = prepare(manifest, args.gallery, work)
    photos = query_photos(manifest, gallery_csv, args.queries)
    watch = Watch()
    with watch.phase("index"), Runtime(Settings()) as runtime:
        indexed = index_source(gallery_csv, "bench", runtime.gallery(), runtime.embedder, runtime.settings).indexed
        model = runtime.embedder.model_id
    with watch.phase("load"), server(env, work) as (client, up_s, pid), Memory(pid) as memory:
        memory.mark("accepting")
        result = soak(client, photos, args.clients, args.seconds, memory)
    marks = memory.marks
    return {"command": " ".join(["bench/load.py", *sys.argv[1:]]), "model": model, "gallery_photos": indexed,
            "query_photos": len(photos), "warm_up_s": WARM_UP_S, "server_accepting_after_s": round(up_s, 2),
            "phases": watch.phases, **result,
            "rss_mb": {**marks, "peak": max(rss for _, rss in memory.samples),
                       **memory.drift("window_open", "window_end")},
            "rss_samples": memory.samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", default=str(ROOT.parent / "shared/data/im2gps3k-dev/manifest.csv"))
    parser.add_argument("--gallery", type=int, default=500, help="photos indexed before the soak")
    parser.add_argument("--queries", type=int, default=64, help="distinct query photos the clients cycle through")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0, help="measured time, after the warm-up")
    parser.add_argument("--out", default=str(ROOT / "bench/results/load.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="geoloc-bench-") as work:
        result = run(args, Path(work))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    rss = result["rss_mb"]
    print(f"gallery {result['gallery_photos']} photos, {result['query_photos']} query photos, {result['model']}; "
          f"phases {result['phases']}")
    print("| clients | s | requests | errors | req/s | p50 ms | p95 ms | p99 ms | RSS MiB, 1st -> 4th quarter | peak |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    r = result
    print(f"| {r['clients']} | {r['seconds']:.0f} | {r['requests']} | {r['errors']} | {r['requests_per_s']:.1f} | "
          f"{r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['p99_ms']:.0f} | "
          f"{rss['first_quarter_median']:.0f} -> {rss['last_quarter_median']:.0f} ({rss['growth']:+.0f}) | "
          f"{rss['peak']:.0f} |")
    if result["errors"]:
        sys.exit(f"{result['errors']} requests failed: {result['first_errors']}")


if __name__ == "__main__":
    main()
