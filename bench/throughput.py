"""Locate throughput of the API under concurrent clients, against the encoder's own batched rate, in one run.

    .venv/bin/python bench/throughput.py [--gallery 1000] [--clients 1,4,8,16] [--seconds 15] [--batch 16]

Baseline: Embedder.features over batches of --batch decoded dev photos in memory (photos/s), measured before
and after the HTTP phases (the mean of both is the baseline). HTTP: a fresh `geoloc serve` on a free loopback
port (GEOLOC_REQUIRE_KEYS=0), then for each client count, that many threads each POSTing one real dev photo at
a time to /v1/locate for --seconds (after a short warm-up): photos/s, its ratio to the baseline, and latency
percentiles. The query photos are taken by photographers the gallery lacks. Also recorded: how long the server
took to accept connections and its first locate. The clients run on the same cores as the server.
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
from geoloc.ingest.sources import resolve_manifest_path  # noqa: E402
from geoloc.runtime import Runtime  # noqa: E402
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


def batched_rate(embedder, images: list, batch: int, rounds: int) -> dict:
    """Photos/s of Embedder.features over batches of `batch` decoded photos: median over rounds."""
    batches = [images[i:i + batch] for i in range(0, len(images) - batch + 1, batch)]
    embedder.features(batches[0])  # warm
    rates = []
    for r in range(rounds):
        chunk = batches[r % len(batches)]
        rates.append(len(chunk) / seconds(lambda: embedder.features(chunk)))
    return {"photos_per_s": round(float(np.median(rates)), 2), "rounds": rounds, "batch": batch}


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
    images = [to_rgb(open_image(data)) for _, data in photos]
    watch, result = Watch(), {}
    with watch.phase("index"), Runtime(Settings()) as runtime:
        index_source(gallery_csv, "bench", runtime.gallery(), runtime.embedder, runtime.settings)
        indexed = runtime.gallery().count()
        embedder = runtime.embedder
    with watch.phase("baseline_before"):
        before = batched_rate(embedder, images, args.batch, args.rounds)
    levels = [int(c) for c in args.clients.split(",")]
    with watch.phase("http"), server(env, work) as (client, up_s, _):
        name, data = photos[0]
        first = seconds(lambda: client.post("/v1/locate", files={"photo": (name, data, "image/jpeg")})
                        .raise_for_status())
        for clients in levels:
            result[clients] = load(client, photos, clients, args.seconds)
            print(f"{clients} clients: {result[clients]}", flush=True)
    with watch.phase("baseline_after"):
        after = batched_rate(embedder, images, args.batch, args.rounds)
    baseline = round((before["photos_per_s"] + after["photos_per_s"]) / 2, 2)
    for level in result.values():
        level["ratio_to_baseline"] = round(level["photos_per_s"] / baseline, 3)
    return {"command": " ".join(["bench/throughput.py", *sys.argv[1:]]), "torch_threads": torch.get_num_threads(),
            "server_torch_threads": args.threads,
            "server_batch": {"photos": env.get("GEOLOC_SERVE_BATCH_PHOTOS", "16 (default)"),
                             "wait_ms": env.get("GEOLOC_SERVE_BATCH_WAIT_MS", "5 (default)")},
            "model": embedder.model_id, "gallery_photos": indexed, "query_photos": len(photos),
            "phases": watch.phases, "baseline_photos_per_s": baseline,
            "baseline_runs": {"before": before, "after": after},
            "fresh_server": {"accepting_after_s": round(up_s, 2), "first_locate_s": round(first, 3)},
            "levels": list(result.values())}


def print_table(result: dict) -> None:
    print(f"gallery {result['gallery_photos']} photos, {result['query_photos']} query photos; model "
          f"{result['model']}; fresh server: {result['fresh_server']}")
    print("\n".join(f"phase {name}: {phase}" for name, phase in result["phases"].items()))
    runs = result["baseline_runs"]
    print(f"baseline (Embedder.features, batch {runs['before']['batch']}): {result['baseline_photos_per_s']} photos/s "
          f"(before {runs['before']['photos_per_s']}, after {runs['after']['photos_per_s']})")
    print("| clients | photos/s | x baseline | p50 ms | p95 ms | p99 ms | errors |\n|---|---|---|---|---|---|---|")
    for r in result["levels"]:
        print(f"| {r['clients']} | {r['photos_per_s']:.1f} | {r['ratio_to_baseline']:.2f} | {r['p50_ms']:.0f} | "
              f"{r['p95_ms']:.0f} | {r['p99_ms']:.0f} | {r['errors']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", default=str(ROOT.parent / "shared/data/im2gps3k-dev/manifest.csv"))
    parser.add_argument("--gallery", type=int, default=1000, help="photos indexed before locating")
    parser.add_argument("--queries", type=int, default=64, help="distinct query photos the clients cycle through")
    parser.add_argument("--clients", default="1,4,8,16")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured time per client count")
    parser.add_argument("--batch", type=int, default=16, help="the baseline's batch")
    parser.add_argument("--rounds", type=int, default=12, help="baseline batches timed, before and after")
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
