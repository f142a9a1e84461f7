"""The embedded gallery at scale: N photos of real dimension and payload, built from real features.

The gallery is the dev photos' backbone features (a cache made by `geoloc features`) and jittered copies of
them (Gaussian noise, renormalised), their coordinates spread around the originals'; the queries are photos of
photographers kept out of it. Per layout (float32 vectors in RAM; int8 scalar or TurboQuant 4-bit quantization
in RAM with the float32 originals on disk, rescored): upsert rate, index build time (optimize), disk, resident
memory of a process that opened it and searched, and, per search setting, recall@10 against exact (numpy) search and
latency, unfiltered and inside S2 cells holding ~1% and ~0.01% of the photos (and ~10,000 photos: what 1% is
at a million). Build and search each run in a fresh process, so memory is the gallery's own.

    .venv/bin/python bench/gallery_scale.py --photos 100000

`--limit 50` asks each search for as many photos as locate does (the first 10 are scored);
`--keep` leaves the built galleries under --work; a later run with `--reuse` searches them again, unbuilt.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import s2sphere

from harness import ROOT, Watch, stats

from geoloc.aggregation import POOL_SIZE
from geoloc.cells import to_int64
from geoloc.embedding import l2_normalise
from geoloc.features import load_features
from geoloc.gallery.base import GalleryPoint, SearchFilter, make_payload
from geoloc.gallery.edge import EdgeGallery
from geoloc.ingest.records import point_id
from geoloc.settings import GalleryTuning

FEATURES = ROOT / "im2gps3k-dev.npz"  # from `geoloc features ../shared/data/im2gps3k-dev/manifest.csv`
COLLECTION, K, SEED = "scale", 10, 0
# jitter, relative to a vector's norm per sqrt(dim). 1.0: a copy's cosine with its original is ~0.71, about that of
# a dev photo with its nearest other dev photo (median 0.61, 90th percentile 0.72); 0.35 (~0.94) makes each
# photo a cluster of near-duplicates, which is harder for HNSW
NOISE = 1.0
SPREAD_KM = 30.0  # copies lie at an exponential distance (this mean) from their original, in any direction
QUERIES = 100
EFS = (16, 32, 64, 128, 256, 512)
TARGETS = {"cell_1pct": 0.01, "cell_0.01pct": 0.0001}
LAYOUTS = ("float32", "int8", "turbo4")  # GEOLOC_EDGE_QUANTIZATION


def split(fs) -> tuple[np.ndarray, np.ndarray]:
    """Gallery rows and query rows: no photographer on both sides."""
    rng = np.random.default_rng(SEED)
    people = np.unique(fs.photographers)
    rng.shuffle(people)
    rows = np.arange(len(fs.lat))
    held, queries = set(), []
    for person in people:
        mine = rows[fs.photographers == person]
        if len(queries) >= QUERIES:
            break
        held.add(person)
        queries.extend(mine.tolist())
    queries = np.asarray(queries[:QUERIES])
    gallery = rows[~np.isin(fs.photographers, list(held))]
    return gallery, queries


def chunk(fs, base: np.ndarray, start: int, stop: int, noise: float = NOISE):
    """Photos start..stop of the gallery: vectors (N, dim), lat, lon, digests. Photo i is a copy of base row
    i % len(base): the original itself for the first len(base), jittered after that (deterministic per i)."""
    n = stop - start
    src = base[np.arange(start, stop) % len(base)]
    x = l2_normalise(fs.features[src].astype(np.float32))
    lat, lon = fs.lat[src].astype(np.float64), fs.lon[src].astype(np.float64)
    rng = np.random.default_rng([SEED, start])
    copy = np.arange(start, stop) >= len(base)
    jitter = rng.standard_normal(x.shape).astype(np.float32) * (noise / np.sqrt(x.shape[1]))
    x = l2_normalise(np.where(copy[:, None], x + jitter, x))
    km = rng.exponential(SPREAD_KM, n) * copy
    bearing = rng.uniform(0, 2 * np.pi, n)
    lat2 = np.clip(lat + km / 111.2 * np.cos(bearing), -89.9, 89.9)
    lon2 = (lon + km / (111.2 * np.maximum(np.cos(np.radians(lat)), 0.05)) * np.sin(bearing) + 180) % 360 - 180
    digests = [hashlib.sha256(f"{fs.sha256[s]}/{i}".encode()).hexdigest() for s, i in zip(src, range(start, stop))]
    return x, lat2, lon2, digests


def build(args) -> dict:
    """In its own process: upsert every photo, then optimize; rates, times and sizes."""
    fs = load_features(args.features)
    base, _ = split(fs)
    path = Path(args.work) / args.layout
    shutil.rmtree(path, ignore_errors=True)
    # the index is built once, below, and timed
    manual = GalleryTuning(index_after_upserts=0, hnsw_m=args.m, hnsw_ef_construct=args.ef_construct)
    gallery = EdgeGallery(path, fs.features.shape[1], tuning=manual, quantization=args.layout)
    upsert_s = 0.0
    for start in range(0, args.photos, 8192):
        x, lat, lon, digests = chunk(fs, base, start, min(args.photos, start + 8192), args.noise)
        points = [GalleryPoint(point_id(COLLECTION, d), v, make_payload(COLLECTION, a, o, f"copy/{d[:12]}.jpg",
                                                                        fs.model_id, d))
                  for v, a, o, d in zip(x, lat, lon, digests)]
        t = time.perf_counter()
        gallery.upsert(points)
        upsert_s += time.perf_counter() - t
    gallery.close()
    before = du(path)
    gallery = EdgeGallery(path, tuning=manual)
    t = time.perf_counter()
    gallery.optimize()  # the breadth it measures is read back from the gallery by the search phase
    optimize_s = time.perf_counter() - t
    gallery.close()
    return {"upsert_per_s": round(args.photos / upsert_s), "upsert_s": round(upsert_s, 1),
            "optimize_s": round(optimize_s, 1), "disk_mib_before_optimize": before, "disk_mib": du(path)}


def stall(args) -> dict:
    """In its own process: while the index of the first --stall photos is built, a thread searches on; the longest
    gap between its answers with Edge's own optimize() on the live shard, and with EdgeGallery.optimize() (a copy
    indexed by another process, then swapped in)."""
    fs = load_features(args.features)
    base, _ = split(fs)
    x, lat, lon, digests = chunk(fs, base, 0, args.stall, args.noise)
    points = [GalleryPoint(point_id(COLLECTION, d), v, make_payload(COLLECTION, a, o, "s.jpg", fs.model_id, d))
              for v, a, o, d in zip(x, lat, lon, digests)]
    out = {"photos": args.stall}
    for how in ("edge_optimize_in_place", "copy_index_apart_swap"):
        path = Path(args.work) / f"stall-{how}"
        shutil.rmtree(path, ignore_errors=True)
        gallery = EdgeGallery(path, x.shape[1], tuning=GalleryTuning(index_after_upserts=0))
        gallery.upsert(points)
        answered, stop = [time.perf_counter()], threading.Event()

        def searching():
            while not stop.is_set():
                gallery.search(x[0], K)
                answered.append(time.perf_counter())
                time.sleep(0.002)

        searcher = threading.Thread(target=searching)
        searcher.start()
        time.sleep(1.0)
        t = time.perf_counter()
        if how == "edge_optimize_in_place":
            with gallery._using:
                gallery._shard.optimize()
        else:
            gallery.optimize()
        built = time.perf_counter() - t
        time.sleep(1.0)
        stop.set()
        searcher.join()
        gaps = np.diff(answered)
        out[how] = {"build_s": round(built, 1), "searches": len(gaps), "longest_gap_s": round(float(gaps.max()), 3),
                    "median_gap_ms": round(float(np.median(gaps)) * 1000, 2)}
        gallery.close()
        shutil.rmtree(path, ignore_errors=True)
    return out


def du(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20, 1)


def rss_mib() -> dict:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {key: round(int(status[key].split()[0]) / 1024, 1) for key in ("VmRSS", "RssAnon", "RssFile")}


def search(args) -> dict:
    """In its own process: open the built gallery, run every query under every setting; ids and times."""
    plan = json.loads(Path(args.plan).read_text())
    empty = rss_mib()
    t = time.perf_counter()
    gallery = EdgeGallery(Path(args.work) / args.layout)
    out = {"open_s": round(time.perf_counter() - t, 2), "rss_open": rss_mib(), "rss_before_open": empty, "runs": {}}
    modes = [("unfiltered", None)] + [(name, plan["cells"][name]) for name in plan["cells"]]
    efs = [int(ef) for ef in args.efs.split(",")] if args.efs else EFS
    # "measured": hnsw_ef unset, so searches keep the breadth the index build chose (gallery.search_breadth)
    settings = [(f"ef{ef}", ef) for ef in efs] + [("measured", None)] * bool(gallery.breadth) + [("exact", None)]
    out["measured_breadth"] = gallery.breadth and gallery.breadth.to_dict()
    for label, ef in settings:
        if label == "exact":  # exact search reads every vector: what serving HNSW searches holds is measured before
            out["rss_searched"] = rss_mib()
        gallery.hnsw_ef = ef
        for mode, ranges in modes:
            passes = []  # the first pass of a setting reads colder pages than the next: each pass's median is kept
            for _ in range(args.passes):
                ids, times = [], []
                for i, q in enumerate(plan["queries"]):
                    flt = None if ranges is None else gallery._native_filter(SearchFilter(cell_ranges=[ranges[i]]))
                    t = time.perf_counter()
                    hits = gallery._query(q, args.limit, flt, exact=label == "exact")
                    times.append(time.perf_counter() - t)
                    ids.append([str(h.id) for h in hits[:K]])
                passes.append(times)
            out["runs"][f"{mode}/{label}"] = {"ids": ids, "passes": passes}
    out["rss_after_exact"] = rss_mib()
    gallery.close()
    return out


def cells_for(s2: np.ndarray, lat: np.ndarray, lon: np.ndarray, target: float) -> tuple[list, list]:
    """Per query, the S2 cell around its location whose photo count is nearest `target` (log scale)."""
    ordered = np.sort(s2)
    chosen, counts = [], []
    for a, o in zip(lat, lon):
        leaf = s2sphere.CellId.from_lat_lng(s2sphere.LatLng.from_degrees(float(a), float(o)))
        best = None
        for level in range(0, 25):
            cell = leaf.parent(level)
            lo, hi = to_int64(cell.range_min().id()), to_int64(cell.range_max().id())
            n = int(np.searchsorted(ordered, hi, "right") - np.searchsorted(ordered, lo, "left"))
            if n and (best is None or abs(np.log(n / target)) < abs(np.log(best[2] / target))):
                best = (lo, hi, n)
        chosen.append([best[0], best[1]])
        counts.append(best[2])
    return chosen, counts


def ground_truth(fs, base, photos: int, queries: np.ndarray, cells: dict, noise: float) -> tuple[dict, dict]:
    """Exact top-K ids per query, unfiltered and per cell setting, by numpy over every vector."""
    scores, all_ids, s2 = [], [], []
    for start in range(0, photos, 8192):
        x, lat, lon, digests = chunk(fs, base, start, min(photos, start + 8192), noise)
        scores.append(queries @ x.T)
        all_ids.extend(point_id(COLLECTION, d) for d in digests)
        s2.extend(make_payload(COLLECTION, a, o, "", "", "")["s2"] for a, o in zip(lat, lon))
    scores, all_ids, s2 = np.concatenate(scores, axis=1), np.asarray(all_ids), np.asarray(s2, dtype=np.int64)
    truth = {"unfiltered": [all_ids[np.argsort(-row)[:K]].tolist() for row in scores]}
    for name, ranges in cells.items():
        truth[name] = []
        for row, (lo, hi) in zip(scores, ranges):
            inside = np.flatnonzero((s2 >= lo) & (s2 <= hi))
            truth[name].append(all_ids[inside[np.argsort(-row[inside])[:K]]].tolist())
    return truth, s2


def child(kind: str, args, layout: str, extra: list[str] | None = None) -> dict:
    command = [sys.executable, __file__, f"--{kind}", "--layout", layout, "--photos", str(args.photos),
               "--work", str(args.work), "--features", str(args.features), "--noise", str(args.noise),
               "--m", str(args.m), "--ef-construct", str(args.ef_construct), "--passes", str(args.passes),
               "--limit", str(args.limit),
               *(extra or [])]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


def score(runs: dict, truth: dict, photos: int) -> dict:
    table = {}
    for key, run in runs.items():
        mode = key.split("/")[0]
        hits = [len(set(got) & set(want)) / max(1, len(want)) for got, want in zip(run["ids"], truth[mode])]
        table[key] = {"recall_at_10": round(float(np.mean(hits)), 4), "min_recall": round(float(np.min(hits)), 2),
                      **stats(run["passes"][-1])}
        if len(run["passes"]) > 1:  # stats above: the last pass
            table[key]["median_ms_by_pass"] = [stats(times)["median_ms"] for times in run["passes"]]
    return table


def run(args) -> dict:
    fs = load_features(args.features)
    base, rows = split(fs)
    queries = l2_normalise(fs.features[rows].astype(np.float32))
    watch = Watch()
    with watch.phase("plan"):
        _, s2 = ground_truth(fs, base, args.photos, queries[:1], {}, args.noise)
        targets = {**TARGETS, "cell_10000": 10000 / args.photos}
        cells = {name: cells_for(s2, fs.lat[rows], fs.lon[rows], frac * args.photos) for name, frac in targets.items()}
        truth, _ = ground_truth(fs, base, args.photos, queries, {n: c[0] for n, c in cells.items()}, args.noise)
    plan = Path(args.work) / "plan.json"
    plan.write_text(json.dumps({"queries": queries.tolist(), "cells": {n: c[0] for n, c in cells.items()}}))
    result = {"photos": args.photos, "dim": int(fs.features.shape[1]), "base_photos": len(base),
              "queries": len(rows), "noise": args.noise, "spread_km": SPREAD_KM, "limit": args.limit,
              "graph": {"m": args.m, "ef_construct": args.ef_construct},
              "cell_photos": {n: {"median": int(np.median(c[1])), "min": int(min(c[1])), "max": int(max(c[1]))}
                              for n, c in cells.items()}, "layouts": {}}
    for layout in args.layouts.split(","):
        with watch.phase(f"{layout}/build"):
            kept = args.reuse and (Path(args.work) / layout / "gallery.json").is_file()
            built = {"reused": str(Path(args.work) / layout)} if kept else child("build", args, layout)
        with watch.phase(f"{layout}/search"):
            searched = child("search", args, layout, ["--plan", str(plan), "--efs", args.efs or ""])
        result["layouts"][layout] = {**built, **{k: v for k, v in searched.items() if k != "runs"},
                                     "search": score(searched["runs"], truth, args.photos)}
        print(json.dumps({layout: result["layouts"][layout]}, indent=1), file=sys.stderr)
        if not args.keep:
            shutil.rmtree(Path(args.work) / layout, ignore_errors=True)
    if args.stall:
        with watch.phase("stall"):
            result["search_during_index_build"] = child("stall-run", args, "float32", ["--stall", str(args.stall)])
    result["machine"] = watch.phases
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=1_000_000)
    parser.add_argument("--layouts", default=",".join(LAYOUTS))
    parser.add_argument("--efs", default="", help="hnsw_ef values to measure, comma-separated (default: 16 ... 512)")
    parser.add_argument("--passes", type=int, default=1,
                        help="times each setting runs the queries in a row; latency is the last pass's")
    parser.add_argument("--limit", type=int, default=K, help=f"photos each search asks for (locate: {POOL_SIZE}, "
                        f"aggregation.POOL_SIZE); recall@10 is that of the first {K}")
    parser.add_argument("--noise", type=float, default=NOISE, help="jitter of the copies (see NOISE)")
    parser.add_argument("--m", type=int, default=GalleryTuning().hnsw_m, help="HNSW links per photo")
    parser.add_argument("--ef-construct", type=int, default=GalleryTuning().hnsw_ef_construct,
                        help="HNSW candidates while linking")
    parser.add_argument("--features", type=Path, default=FEATURES)
    parser.add_argument("--work", type=Path, default=Path("/tmp/geoloc-gallery-scale"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the built galleries under --work")
    parser.add_argument("--reuse", action="store_true",
                        help="search a gallery kept under --work by an earlier run of the same --photos (no build)")
    parser.add_argument("--stall", type=int, default=20_000,
                        help="photos of the gallery on which searches are timed during an index build (0: skip)")
    parser.add_argument("--layout", help=argparse.SUPPRESS)
    parser.add_argument("--plan", help=argparse.SUPPRESS)
    parser.add_argument("--build", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--search", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stall-run", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.layout:
        print(json.dumps(build(args) if args.build else search(args) if args.search else stall(args)))
        return
    result = run(args)
    out = args.out or ROOT / "bench" / "results" / f"gallery_scale_{args.photos}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items()}, indent=1))


if __name__ == "__main__":
    main()
