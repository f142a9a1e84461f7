"""Cost of sharing the embedded gallery between processes: a locked load per operation vs one held open.

    .venv/bin/python bench/shared_gallery.py [--sizes 1000 10000 50000]

For each gallery size (random 1280-d unit vectors, payload as indexing writes it): the median time of a
collection-filtered top-10 search on an EdgeGallery held open (the baseline), then on a
SharedEdgeGallery (flock, load, search, close per call), and their ratio. Results go to
bench/results/shared_gallery.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from geoloc.gallery.base import GalleryPoint, SearchFilter, make_payload  # noqa: E402
from geoloc.gallery.edge import EdgeGallery  # noqa: E402
from geoloc.gallery.shared import SharedEdgeGallery  # noqa: E402

DIM = 1280
REPEATS = 5


def median_seconds(fn) -> float:
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build(path: Path, size: int, rng: np.random.Generator) -> np.ndarray:
    with EdgeGallery(path, DIM) as gallery:
        for start in range(0, size, 2000):
            n = min(2000, size - start)
            vectors = rng.normal(size=(n, DIM)).astype(np.float32)
            lat, lon = rng.uniform(-60, 60, n), rng.uniform(-180, 180, n)
            gallery.upsert([GalleryPoint(str(uuid.uuid4()), v, make_payload("bench", a, o, "s", "bench", "0"))
                            for v, a, o in zip(vectors, lat, lon)])
    return rng.normal(size=DIM).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    where = SearchFilter(collections=["bench"])
    rows = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix="geoloc-bench-") as tmp:
            query = build(Path(tmp), size, rng)
            with EdgeGallery(Path(tmp)) as held:
                held_s = median_seconds(lambda: held.search(query, 10, where))
            shared = SharedEdgeGallery(Path(tmp))
            shared_s = median_seconds(lambda: shared.search(query, 10, where))
        rows.append({"photos": size, "held_open_ms": round(1000 * held_s, 2),
                     "shared_ms": round(1000 * shared_s, 1), "shared_vs_held": round(shared_s / held_s, 1)})
    out = ROOT / "bench/results/shared_gallery.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print("| photos | search, gallery held open (ms) | search, shared: lock+load+close (ms) | ratio |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['photos']:,} | {r['held_open_ms']} | {r['shared_ms']} | {r['shared_vs_held']}x |")


if __name__ == "__main__":
    main()
