"""Locate throughput of the API under concurrent clients, against two in-process baselines, in one run.

    .venv/bin/python bench/throughput.py [--gallery 1000] [--clients 1,4,8,16] [--seconds 15] [--batch 16]

Baselines, each measured before and after the HTTP phases (the mean of both counts), photos/s:
- locate: the product's locate path in this process on batches of --batch query photos, bytes to answer
  dicts (decoded as the route decodes them, SHA-256, one forward pass per batch, search, aggregation,
  calibration, place names): what the API would reach if it added nothing to batched work;
- encoder: Embedder.features alone over batches of --batch decoded photos in memory, the ceiling.
HTTP: a fresh `geoloc serve` on a free loopback port (GEOLOC_REQUIRE_KEYS=0), then for each client count, that
many threads each POSTing one real dev photo at a time to /v1/locate for --seconds (after a short warm-up):
photos/s, its ratio to each baseline, and latency percentiles. The query photos are taken by photographers the
gallery lacks. Also recorded: how long the server took to accept connections and its first locate. The clients
run on the same cores as the server.
Results: bench/results/throughput.json; each phase's `other_cores` says how much the shared machine disturbed it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
from pathlib import Path

import httpx
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness import Watch, locate_clients, prepare, seconds, server, window_latencies  # noqa: E402
from geoloc.indexing import index_source  # noqa: E402
from geoloc.ingest.images import open_image, to_rgb  # noqa: E402
from geoloc.ingest.records import sha256_hex  # noqa: E402
from geoloc.ingest.sources import resolve_manifest_path  # noqa: E402
from geoloc.locate import Locator  # noqa: E402
from geoloc.runtime import Runtime  # noqa: E402
from geoloc.search_api.routes.common import QUERY_DECODE_SIDE  # noqa: E402
from geoloc.settings import Settings  # noqa: E402

WARM_UP_S = 2.0


def query_photos(manifest: Path, gallery_csv: Path, n: int) -> list[tuple[str, bytes]]:
    """Up to n photos after the gallery's slice, by photographers the gallery lacks: (name, bytes)."""
    with gallery_csv.open(newline="") as handle:
        photographers = {row.get("photographer") for row in csv.DictReader(handle)}
    with manifest.open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("photographer") not in photographers]
    paths = [resolve_manifest_path(manifest, r["filename"]).resolve() for r in rows[:n]]
    return [(p.name, p.read_bytes()) for p in paths]


def median_rate(work, chunks: list, rounds: int) -> dict:
    """Photos/s of work(chunk) over `rounds` chunks after two warm calls (the second traces the encoder): the median."""
    for chunk in chunks[:2]:
        work(chunk)
    rates = [len(chunk) / seconds(lambda: work(chunk)) for chunk in (chunks[r % len(chunks)] for r in range(rounds))]
    return {"photos_per_s": round(float(np.median(rates)), 2), "rounds": rounds, "batch": len(chunks[0])}


def baselines(photos: list, settings: Settings, batch: int, rounds: int) -> dict:
    """Both in-process rates on the gallery the server will hold (opened here, closed before the server opens it)."""
    chunks = [photos[i:i + batch] for i in range(0, len(photos) - batch + 1, batch)]
    images = [[to_rgb(open_image(data)) for _, data in chunk] for chunk in chunks]
    with Runtime(settings) as runtime:
        embedder = runtime.embedder
        locator = Locator(embedder, runtime.gallery(), home=settings.home)

        def locate(chunk: list) -> None:
            decoded = [to_rgb(open_image(data, settings.max_pixels, min_side=QUERY_DECODE_SIDE)) for _, data in chunk]
            for answer in locator.locate(decoded, [sha256_hex(data) for _, data in chunk]):
                answer.to_dict()

        return {"encoder": median_rate(embedder.features, images, rounds),
                "locate": median_rate(locate, chunks, rounds), "model": embedder.model_id}


def load(client: httpx.Client, photos: list, clients: int, duration: float) -> dict:
    """`clients` threads, each POSTing one photo after another: counts and latencies after the warm-up."""
    latencies = window_latencies(*locate_clients(client, photos, clients, WARM_UP_S, duration))
    answered = latencies.pop("answered")
    return {"clients": clients, "photos": answered, "photos_per_s": round(answered / duration, 2), **latencies}


def run(args, work: Path) -> dict:
    threads = str(args.threads)
    env = dict(os.environ, GEOLOC_HOME=str(Path(args.home) if args.home else work / "home"), GEOLOC_REQUIRE_KEYS="0",
               OMP_NUM_THREADS=threads, GEOLOC_TORCH_THREADS=threads)
    os.environ["GEOLOC_HOME"] = env["GEOLOC_HOME"]
    manifest = Path(args.manifest)
    gallery_csv, _ = prepare(manifest, args.gallery, work)
    photos = query_photos(manifest, gallery_csv, args.queries)
    watch, result, settings = Watch(), {}, Settings()
    with watch.phase("index"), Runtime(settings) as runtime:
        index_source(gallery_csv, "bench", runtime.gallery(), runtime.embedder, runtime.settings)
        indexed = runtime.gallery().count()
    with watch.phase("baselines_before"):
        before = baselines(photos, settings, args.batch, args.rounds)
    levels = [int(c) for c in args.clients.split(",")]
    with watch.phase("http"), server(env, work) as (client, up_s, _):
        name, data = photos[0]
        first = seconds(lambda: client.post("/v1/locate", files={"photo": (name, data, "image/jpeg")})
                        .raise_for_status())
        for clients in levels:
            result[clients] = load(client, photos, clients, args.seconds)
            print(f"{clients} clients: {result[clients]}", flush=True)
    with watch.phase("baselines_after"):
        after = baselines(photos, settings, args.batch, args.rounds)
    model = before.pop("model")
    after.pop("model")
    baseline = {kind: round((before[kind]["photos_per_s"] + after[kind]["photos_per_s"]) / 2, 2)
                for kind in ("locate", "encoder")}
    for level in result.values():
        level["ratio_to_locate"] = round(level["photos_per_s"] / baseline["locate"], 3)
        level["ratio_to_encoder"] = round(level["photos_per_s"] / baseline["encoder"], 3)
    return {"command": " ".join(["bench/throughput.py", *sys.argv[1:]]), "torch_threads": torch.get_num_threads(),
            "server_torch_threads": args.threads,
            # as the server reads them: it inherits this process's environment
            "server_batch": {"photos": settings.serve_batch_photos, "wait_ms": settings.serve_batch_wait_ms,
                             "lanes": settings.serve_lanes},
            "model": model, "gallery_photos": indexed, "query_photos": len(photos),
            "phases": watch.phases, "baseline_photos_per_s": baseline,
            "baseline_runs": {"before": before, "after": after},
            "fresh_server": {"accepting_after_s": round(up_s, 2), "first_locate_s": round(first, 3)},
            "levels": list(result.values())}


def print_table(result: dict) -> None:
    print(f"gallery {result['gallery_photos']} photos, {result['query_photos']} query photos; model "
          f"{result['model']}; fresh server: {result['fresh_server']}")
    print("\n".join(f"phase {name}: {phase}" for name, phase in result["phases"].items()))
    runs, base = result["baseline_runs"], result["baseline_photos_per_s"]
    for kind in ("locate", "encoder"):
        print(f"baseline {kind}, batch {runs['before'][kind]['batch']}: {base[kind]} photos/s "
              f"(before {runs['before'][kind]['photos_per_s']}, after {runs['after'][kind]['photos_per_s']})")
    print("| clients | photos/s | x locate | x encoder | p50 ms | p95 ms | p99 ms | errors |\n"
          "|---|---|---|---|---|---|---|---|")
    for r in result["levels"]:
        print(f"| {r['clients']} | {r['photos_per_s']:.1f} | {r['ratio_to_locate']:.2f} | {r['ratio_to_encoder']:.2f} "
              f"| {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['p99_ms']:.0f} | {r['errors']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", default=str(ROOT.parent / "shared/data/im2gps3k-dev/manifest.csv"))
    parser.add_argument("--gallery", type=int, default=1000, help="photos indexed before locating")
    parser.add_argument("--queries", type=int, default=64, help="distinct query photos the clients cycle through")
    parser.add_argument("--clients", default="1,4,8,16")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured time per client count")
    parser.add_argument("--batch", type=int, default=16, help="the baselines' batch")
    parser.add_argument("--rounds", type=int, default=12, help="batches timed per baseline, before and after")
    parser.add_argument("--out", default=str(ROOT / "bench/results/throughput.json"))
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch threads, here and in the server (default: the cores, as the server's default)")
    parser.add_argument("--home", help="a data home to keep between runs (the gallery is then indexed once)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="geoloc-bench-") as work:
        result = run(args, Path(work))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)


if __name__ == "__main__":
    main()
