"""Latency of locating one photo, layer by layer, against the backbone alone on the same photo, in one run.

    .venv/bin/python bench/locate.py [--repeats 50] [--gallery 1000] [--cli-repeats 5] [--manifest CSV]

Baseline: Backbone.features on one decoded photo in memory (batch of one, warm), timed in turn with the
in-process and the HTTP repetitions (and back to back, its best case, for reference).
In-process: the API's path from the photo's bytes over the API's own Services, started as a server starts them
(open_image + to_rgb, serving(), Locator(...), the cached check_ready(), the features through the batcher,
locate_features(), to_dict()), its parts timed by a Locator subclass and thin wrappers that call the product's
own methods. HTTP: POST /v1/locate to a real `geoloc serve` on loopback, one client; a fresh server's start
(until it accepts connections, model loaded) and first request are timed apart.
CLI: `geoloc locate ONE.jpg` against `python -c 'import torch, timm'`, alternated.
Gallery: the manifest's first --gallery photos in a fresh GEOLOC_HOME (or --home, kept); the query photo is a
later one by a photographer the gallery lacks. --threads torch threads (2) here and in the subprocesses.
Results: bench/results/locate.json; each phase's `other_cores` says how much the shared machine disturbed it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness import WARMUP, Watch, alternate, prepare, seconds, server, stats  # noqa: E402
from geoloc.embedding import Embedder  # noqa: E402
from geoloc.indexing import index_source  # noqa: E402
from geoloc.ingest.images import open_image, to_rgb  # noqa: E402
from geoloc.locate import Locator  # noqa: E402
from geoloc.runtime import Runtime  # noqa: E402
from geoloc.search_api.routes.common import QUERY_DECODE_SIDE  # noqa: E402
from geoloc.search_api.services import build_services  # noqa: E402
from geoloc.settings import Settings  # noqa: E402

PIECES = ["decode", "serving()", "Locator()", "check_ready()", "batcher hop", "preprocess+backbone", "gallery search",
          "aggregation", "calibration", "place names", "to_dict()"]


class Clock:
    """Seconds per named piece, one list each."""
    def __init__(self):
        self.laps: dict[str, list[float]] = defaultdict(list)

    @contextmanager
    def lap(self, name: str):
        start = time.perf_counter()
        yield
        self.laps[name].append(time.perf_counter() - start)


class TimedEmbedder(Embedder):
    def __init__(self, embedder: Embedder, clock: Clock):
        super().__init__(embedder.backbone, embedder.bundle)
        self.clock = clock

    def features(self, images):
        with self.clock.lap("preprocess+backbone"):
            return super().features(images)


class TimedGallery:
    """The gallery as it is, its searches timed."""
    def __init__(self, gallery, clock: Clock):
        self._gallery, self._clock = gallery, clock

    def search(self, *args, **kwargs):
        with self._clock.lap("gallery search"):
            return self._gallery.search(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._gallery, name)


class TimedLocator(Locator):
    """The product's Locator; place names (with the L2 normalisation, microseconds) are what locate_features
    spends outside its other timed parts."""
    def __init__(self, *args, clock: Clock, **kwargs):
        self.clock = clock
        super().__init__(*args, **kwargs)

    def locate_features(self, features):
        with self.clock.lap("locate_features"):
            return super().locate_features(features)

    def _answer(self, hits, cell_weights=None):
        with self.clock.lap("aggregation"):
            return super()._answer(hits, cell_weights)

    def _calibrate(self, answers):
        with self.clock.lap("calibration"):
            return super()._calibrate(answers)


TIMED_GALLERIES: dict[int, TimedGallery] = {}


def locate_once(services, data: bytes, clock: Clock) -> dict:
    """Bytes -> answer dict, as POST /v1/locate runs it (default k, aggregator, all collections)."""
    with clock.lap("total"):
        with clock.lap("decode"):
            image = to_rgb(open_image(data, services.settings.max_pixels, min_side=QUERY_DECODE_SIDE))
        with clock.lap("serving()"):
            embedder, gallery = services.serving()
        timed = TIMED_GALLERIES.setdefault(id(gallery), TimedGallery(gallery, clock))  # one per store, as served
        with clock.lap("Locator()"):
            locator = TimedLocator(embedder, timed, clock=clock, home=services.settings.home)
        with clock.lap("check_ready()"):
            services.check_ready(locator)
        with clock.lap("batched features"):
            features = services.features(embedder, [image])
        answer = locator.locate_features(features)[0]
        with clock.lap("to_dict()"):
            return answer.to_dict()


def in_process(data: bytes, repeats: int) -> tuple[Clock, list[float], dict, Embedder]:
    """Services started as a server starts them (the model's batcher running TimedEmbedder), then warm locates
    alternating with the baseline; the start and the first locate after it are reported apart."""
    clock, image, settings, start = Clock(), to_rgb(open_image(data)), Settings(), time.perf_counter()
    services = build_services(settings, TimedEmbedder(Embedder.from_settings(settings), clock))
    services.start()
    started = time.perf_counter() - start
    embedder = Embedder(services.runtime.embedder.backbone)  # the baseline: the same backbone, untimed
    cold = seconds(lambda: locate_once(services, data, clock))
    first = locate_once(services, data, clock)
    clock.laps.clear()
    _, baseline = alternate(lambda: locate_once(services, data, clock), lambda: embedder.features([image]), repeats)
    clock.laps = {name: laps[WARMUP:] for name, laps in clock.laps.items()}
    clock.laps["batcher hop"] = [b - f for b, f in zip(clock.laps.pop("batched features"),
                                                       clock.laps["preprocess+backbone"])]
    services.close()  # the embedded gallery admits one process at a time: the server opens it next
    # the backbone back to back, nothing between calls: its best case, for reference (ratios use the alternated one)
    back_to_back = [seconds(lambda: embedder.features([image])) for _ in range(repeats)]
    return clock, baseline, {"start_s": round(started, 3), "cold_first_locate_s": round(cold, 3), "answer": first,
                             "back_to_back": stats(back_to_back)}, embedder


def large_decode(data: bytes, repeats: int) -> dict:
    """The query photo made a 12 MP JPEG (4000 x 3000, quality 90): decoded whole vs as the locate route does."""
    from PIL import Image

    out = io.BytesIO()
    to_rgb(open_image(data)).resize((4000, 3000), Image.BICUBIC).save(out, "JPEG", quality=90)
    big = out.getvalue()
    full, reduced = alternate(lambda: to_rgb(open_image(big)),
                              lambda: to_rgb(open_image(big, min_side=QUERY_DECODE_SIDE)), repeats)
    return {"bytes": len(big), "full": stats(full), "as_located": stats(reduced)}


def over_http(env: dict, work: Path, query: Path, data: bytes, embedder: Embedder, repeats: int) -> dict:
    """Warm POSTs alternating with the baseline in this process (whose gallery is closed by now)."""
    image, files = to_rgb(open_image(data)), {"photo": (query.name, data, "image/jpeg")}
    with server(env, work) as (client, started):
        start = time.perf_counter()
        answer = client.post("/v1/locate", files=files).raise_for_status().json()
        cold = time.perf_counter() - start
        http, baseline = alternate(lambda: client.post("/v1/locate", files=files).raise_for_status(),
                                   lambda: embedder.features([image]), repeats)
    return {"http": http, "baseline": baseline, "server_up_s": round(started, 3),
            "cold_first_request_s": round(cold, 3), "answer": answer}


def command_line(env: dict, query: Path, repeats: int) -> dict:
    """`geoloc locate ONE.jpg` and `python -c 'import torch, timm'`, alternated, wall time each."""
    commands = {"geoloc_locate": [str(ROOT / ".venv/bin/geoloc"), "locate", str(query)],
                "import_torch_timm": [str(ROOT / ".venv/bin/python"), "-c", "import torch, timm"]}
    times = defaultdict(list)

    def call(command: list[str]) -> None:
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: {done.stderr.strip()[-2000:]}")

    for _ in range(repeats):
        for name, command in commands.items():
            times[name].append(seconds(lambda: call(command)))
    return {name: round(float(np.median(t)), 3) for name, t in times.items()} | {
        "all_s": {name: [round(s, 3) for s in t] for name, t in times.items()}}


def run(args, work: Path) -> dict:
    threads = str(args.threads)
    env = dict(os.environ, GEOLOC_HOME=str(Path(args.home) if args.home else work / "home"), GEOLOC_REQUIRE_KEYS="0",
               OMP_NUM_THREADS=threads, GEOLOC_TORCH_THREADS=threads)
    for name in ("GEOLOC_HOME", "GEOLOC_TORCH_THREADS"):  # Settings() here reads them too (Services.start sets threads)
        os.environ[name] = env[name]
    gallery_csv, query = prepare(Path(args.manifest), args.gallery, work)
    data, watch = query.read_bytes(), Watch()
    with watch.phase("index"), Runtime(Settings()) as runtime:
        index_source(gallery_csv, "bench", runtime.gallery(), runtime.embedder, runtime.settings)
        indexed = runtime.gallery().count()
    with watch.phase("in_process"):
        clock, base_in, cold, embedder = in_process(data, args.repeats)
    with watch.phase("decode_12mp"):
        decode_12mp = large_decode(data, max(5, args.repeats // 5))
    with watch.phase("http"):
        http = over_http(env, work, query, data, embedder, args.repeats)
    with watch.phase("cli"):
        cli = command_line(env, query, args.cli_repeats)
    clock.laps["place names"] = [total - sum(clock.laps[p][i] for p in ("gallery search", "aggregation", "calibration"))
                                 for i, total in enumerate(clock.laps["locate_features"])]
    baseline, total, over = stats(base_in + http["baseline"]), stats(clock.laps["total"]), stats(http["http"])
    return {
        "command": " ".join(["bench/locate.py", *sys.argv[1:]]), "torch_threads": torch.get_num_threads(),
        "device": str(embedder.backbone.device), "model": embedder.model_id, "repeats": args.repeats,
        "gallery_photos": indexed, "query": {"file": query.name, "bytes": len(data),
                                                    "size": list(to_rgb(open_image(data)).size)},
        "phases": watch.phases, "baseline_backbone": baseline,
        "baseline_by_phase": {"in_process": stats(base_in), "http": stats(http["baseline"])},
        "backbone_back_to_back": cold["back_to_back"],
        "in_process_locate": total,
        "in_process_pieces": {name: stats(clock.laps[name]) for name in PIECES}, "http_locate": over,
        "cold": {"services_start_s": cold["start_s"], "first_locate_in_process_s": cold["cold_first_locate_s"],
                 "server_up_s": http["server_up_s"],
                 "first_http_request_s": http["cold_first_request_s"]},
        "cli_s": cli, "decode_12mp": decode_12mp,
        "answers_agree_in_process_vs_http": all(
            round(cold["answer"][c], 6) == round(http["answer"][c], 6) for c in ("lat", "lon")),
        "ratios": {"in_process_vs_backbone": ratio(total, baseline), "http_vs_backbone": ratio(over, baseline),
                   "http_vs_in_process": ratio(over, total),
                   # each against the baseline timed in its own phase: what load drift between phases leaves
                   "http_vs_in_process_per_phase_baseline": round(
                       ratio(over, stats(http["baseline"]))["median"] / ratio(total, stats(base_in))["median"], 2),
                   "cli_locate_vs_import_torch_timm": round(cli["geoloc_locate"] / cli["import_torch_timm"], 2)},
    }


def ratio(a: dict, b: dict) -> dict:
    return {"median": round(a["median_ms"] / b["median_ms"], 2), "p90": round(a["p90_ms"] / b["p90_ms"], 2)}


def print_table(result: dict) -> None:
    base = result["baseline_backbone"]
    print(f"query {result['query']}; gallery {result['gallery_photos']} photos; {result['torch_threads']} threads")
    print("\n".join(f"phase {name}: {phase}" for name, phase in result["phases"].items()))
    print("| measure | median ms | p90 ms | x backbone (median) |\n|---|---|---|---|")

    def row(label: str, s: dict) -> None:
        print(f"| {label} | {s['median_ms']:.1f} | {s['p90_ms']:.1f} | {s['median_ms'] / base['median_ms']:.2f} |")

    row("backbone alone (decoded photo, batch 1) = baseline", base)
    for name, s in result["baseline_by_phase"].items():
        row(f"  baseline during the {name} phase", s)
    row("  backbone back to back (best case, not a baseline)", result["backbone_back_to_back"])
    row("locate in-process, bytes to answer", result["in_process_locate"])
    for name, s in result["in_process_pieces"].items():
        row(f"  {name}", s)
    row("POST /v1/locate, one client", result["http_locate"])
    r, cli = result["ratios"], result["cli_s"]
    print(f"\nHTTP / in-process: {r['http_vs_in_process']} (median, p90); against each phase's baseline: "
          f"{r['http_vs_in_process_per_phase_baseline']}; cold: {result['cold']}")
    print(f"`geoloc locate ONE.jpg` {cli['geoloc_locate']:.2f} s vs `python -c 'import torch, timm'` "
          f"{cli['import_torch_timm']:.2f} s (median of {len(cli['all_s']['geoloc_locate'])}): "
          f"x{r['cli_locate_vs_import_torch_timm']:.2f}")
    big = result["decode_12mp"]
    print(f"12 MP JPEG decode: whole {big['full']['median_ms']:.1f} ms, as located (draft) "
          f"{big['as_located']['median_ms']:.1f} ms")
    print(f"answers agree (in-process vs HTTP): {result['answers_agree_in_process_vs_http']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", default=str(ROOT.parent / "shared/data/im2gps3k-dev/manifest.csv"))
    parser.add_argument("--gallery", type=int, default=1000, help="photos indexed before locating")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--cli-repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch threads, here and in the server")
    parser.add_argument("--home", help="a data home to keep between runs (the gallery is then indexed once)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="geoloc-bench-") as work:
        result = run(args, Path(work))
    out = ROOT / "bench/results/locate.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)


if __name__ == "__main__":
    main()
