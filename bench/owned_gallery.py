"""Cost of a gallery operation sent to the API that holds the embedded gallery, against the same operation on
an embedded gallery held open in this process, in one run.

    .venv/bin/python bench/owned_gallery.py [--photos 20000] [--repeats 40]

Gallery: --photos random 1280-d vectors with payloads as indexing writes them (uniform over latitudes
-60..60), built once, then copied: the copy is held open here (EdgeGallery, the baseline), the original by a
real `geoloc serve` (one torch thread) that this process reaches through gallery.remote (the socket the API
lends it on), as a worker does.
Operations, each timed alternately on the two, in a random order per repetition, after warm-up:
  search: top-10 among the photos of one S2 level-2 cell (and the collection), as a cell-restricted locate asks;
  upsert: a batch of 64 new photos (a job's batch);
  count: the photos of the collection;
  retrieve: 10 photos by id; scroll: the first page of 512 photos of the collection (payloads, no vectors).
For context, the same operations on the shard taken in turns per operation (gallery.shared, GEOLOC_GALLERY_
SHARED), a few repetitions before the API starts. Results: bench/results/owned_gallery.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import s2sphere

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from geoloc.cells import leaf_range  # noqa: E402
from geoloc.gallery.base import GalleryPoint, SearchFilter, make_payload  # noqa: E402
from geoloc.gallery.edge import EdgeGallery  # noqa: E402
from geoloc.gallery.open import OWNER_SOCKET, open_gallery  # noqa: E402
from geoloc.gallery.remote import OwnedGalleryClient  # noqa: E402
from geoloc.gallery.shared import SharedEdgeGallery  # noqa: E402
from geoloc.settings import Settings  # noqa: E402

DIM = 1280
MODEL = "bench-random-1280"
TOKEN = "bench-internal-token"
BATCH = 64
WARMUP = 3
SHARED_REPEATS = 3


def points(rng: np.random.Generator, n: int) -> list[GalleryPoint]:
    vectors = rng.normal(size=(n, DIM)).astype(np.float32)
    lat, lon = rng.uniform(-60, 60, n), rng.uniform(-180, 180, n)
    return [GalleryPoint(str(uuid.uuid4()), v, make_payload("bench", a, o, "s", MODEL, uuid.uuid4().hex * 2))
            for v, a, o in zip(vectors, lat, lon)]


def build(settings: Settings, n: int, rng: np.random.Generator) -> None:
    with open_gallery(settings, DIM, MODEL) as gallery:
        for start in range(0, n, 2000):
            gallery.upsert(points(rng, min(2000, n - start)))


def operations(rng: np.random.Generator, batches: int) -> tuple[dict, SearchFilter]:
    """name -> the operation on a gallery; and the searched cell's filter."""
    query = rng.normal(size=DIM).astype(np.float32)
    token = s2sphere.CellId.from_lat_lng(s2sphere.LatLng.from_degrees(40.0, 10.0)).parent(2).to_token()
    in_cell = SearchFilter(collections=["bench"], cell_ranges=[leaf_range(token)])
    new = [points(rng, BATCH) for _ in range(batches)]
    pending = {}  # each gallery takes the same batches, in the same order

    every, ids = SearchFilter(collections=["bench"]), []

    def upsert(gallery):
        gallery.upsert(next(pending.setdefault(id(gallery), iter(new))))

    def retrieve(gallery):
        if not ids:  # the same photos in every copy of the gallery
            ids.extend(hit.id for hit in itertools.islice(gallery.scroll(every, batch=10), 10))
        gallery.retrieve(ids)

    ops = {"search (cell filter, top 10)": lambda g: g.search(query, 10, in_cell),
           f"upsert ({BATCH} photos)": upsert,
           "count (collection)": lambda g: g.count(every),
           "retrieve (10 ids)": retrieve,
           "scroll (a page of 512)": lambda g: list(itertools.islice(g.scroll(every, batch=512), 512))}
    return ops, in_cell


def timed(fn, gallery) -> float:
    start = time.perf_counter()
    fn(gallery)
    return time.perf_counter() - start


def alternate(fn, held, owned, repeats: int) -> tuple[list[float], list[float]]:
    for _ in range(WARMUP):
        fn(held), fn(owned)
    times = {"held": [], "owned": []}
    for _ in range(repeats):
        pair = [("held", held), ("owned", owned)]
        random.shuffle(pair)
        for name, gallery in pair:
            times[name].append(timed(fn, gallery))
    return times["held"], times["owned"]


def ms(values: list[float]) -> dict:
    return {"median_ms": round(1000 * statistics.median(values), 3),
            "p90_ms": round(1000 * float(np.percentile(values, 90)), 3)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(home: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """A real `geoloc serve` on this data home, holding its gallery: the owner."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEOLOC_")}
    env.update(GEOLOC_HOME=str(home), GEOLOC_DEVICE="cpu", GEOLOC_INTERNAL_TOKEN=TOKEN, GEOLOC_TORCH_THREADS="1",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    api = subprocess.Popen([sys.executable, "-m", "geoloc.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
                            "--log-level", "warning"], env=env, cwd=ROOT, stdout=log.open("wb"),
                           stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if api.poll() is not None:
            raise SystemExit(f"geoloc serve exited:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return api, url
        except httpx.TransportError:
            time.sleep(0.5)
    raise SystemExit("geoloc serve did not start in 300 s")


def measure(args, tmp: Path) -> dict:
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    rng = np.random.default_rng(0)
    settings = Settings(home=tmp / "home", broker_url=None, qdrant_url=None, gallery_shared=False, bundle=None)
    started = time.perf_counter()
    build(settings, args.photos, rng)
    built_s = time.perf_counter() - started
    shutil.copytree(settings.gallery_dir, tmp / "held")
    ops, in_cell = operations(rng, WARMUP + args.repeats)
    results = {}
    shared = SharedEdgeGallery(settings.gallery_dir)
    for name, fn in ops.items():
        results[name] = {"shared": ms([timed(fn, shared) for _ in range(SHARED_REPEATS)])}
    api, _ = serve(settings.home, tmp / "api.log")
    try:
        with EdgeGallery(tmp / "held") as held, OwnedGalleryClient(settings.home / OWNER_SOCKET, TOKEN, MODEL) as owned:
            cell_photos = held.count(in_cell)
            for name, fn in ops.items():
                held_s, owned_s = alternate(fn, held, owned, args.repeats)
                results[name].update(held=ms(held_s), owned=ms(owned_s),
                                     owned_vs_held=round(statistics.median(owned_s) / statistics.median(held_s), 2))
    finally:
        api.terminate()
        api.wait(timeout=30)
    return {"photos": args.photos, "dim": DIM, "repeats": args.repeats, "photos_in_searched_cell": cell_photos,
            "build_s": round(built_s, 1), "cores": os.cpu_count(), "operations": results,
            "load_average_at_start": load_at_start,  # other work on the machine (1, 5, 15 minutes)
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "command": "bench/owned_gallery.py " + " ".join(sys.argv[1:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args()
    random.seed(0)
    with tempfile.TemporaryDirectory(prefix="geoloc-bench-") as tmp:
        report = measure(args, Path(tmp))
    out = ROOT / "bench/results/owned_gallery.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{report['photos']:,} photos of {DIM}-d, {report['photos_in_searched_cell']} in the searched cell")
    print("| operation | held open here (ms) | through the owning API (ms) | ratio | shared per operation (ms) |")
    print("|---|---|---|---|---|")
    for name, r in report["operations"].items():
        print(f"| {name} | {r['held']['median_ms']} | {r['owned']['median_ms']} | {r['owned_vs_held']}x "
              f"| {r['shared']['median_ms']} |")


if __name__ == "__main__":
    main()
