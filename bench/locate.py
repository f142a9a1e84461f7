"""Latency of locating one photo, layer by layer, against the backbone alone on the same photo, in one run.

    .venv/bin/python bench/locate.py [--repeats 50] [--gallery 1000] [--cli-repeats 5] [--threads 2] [--manifest CSV]

Baseline: Backbone.features (Embedder.features: preprocessing + forward pass) on one decoded photo in memory,
batch of one, warm, timed inside the thread that runs it, where the server runs its forward passes: one thread
that runs every forward pass of its phase and was warmed up there, at the same torch thread count (--threads
here, GEOLOC_TORCH_THREADS and OMP_NUM_THREADS in the server), so the ratios compare like with like (a forward
pass from a second thread of a process that has run one on another thread can be much slower). In the
in-process phase the baseline runs on the services' own batcher (on either of its lanes' threads, as a request
does), beside the locates' forward passes; in the HTTP phase on a batcher thread of this process, alternating
with the server's. Each phase alternates its
repetitions with the baseline's (and, back to back, the baseline's best case, for reference); the gallery is
indexed by `geoloc index` in a subprocess, so no other thread of this process has run the model.
In-process: the API's path from the photo's bytes over the API's own Services, started as a server starts them
(open_image + to_rgb, serving(), Locator(...), the cached check_ready(), the features through the batcher,
locate_features(), to_dict()), its parts timed by a Locator subclass and thin wrappers that call the product's own
methods; then all of it but the forward pass again, back to back on the query's features, for reference.
HTTP: POST /v1/locate to a real `geoloc serve` on loopback (GEOLOC_REQUIRE_KEYS=0), one client whose multipart body
is built once (by httpx) and sent on one kept-alive connection (http.client), so the client costs almost nothing; a
fresh server's start (until it accepts connections, model loaded) and first request are timed apart.
CLI: `geoloc locate ONE.jpg` against `python -c 'import torch, timm'`, alternated.
Gallery: the manifest's first --gallery photos in a fresh GEOLOC_HOME (or --home, kept); the query photo is a
later one by a photographer the gallery lacks.
Results: bench/results/locate.json; each phase's `other_cores` says how much the shared machine disturbed it.
"""

from __future__ import annotations

import argparse
import http.client
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
from geoloc.batching import Batcher  # noqa: E402
from geoloc.embedding import Embedder  # noqa: E402
from geoloc.ingest.images import open_image, to_rgb  # noqa: E402
from geoloc.ingest.records import sha256_hex  # noqa: E402
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
    """The product's Locator; place names (and the L2 normalisation, microseconds) are the rest of locate_features."""
    def __init__(self, *args, clock: Clock, **kwargs):
        self.clock = clock
        super().__init__(*args, **kwargs)

    def locate_features(self, features, digests=None):
        with self.clock.lap("locate_features"):
            return super().locate_features(features, digests)

    def _answer(self, hits, cell_weights, wide):
        with self.clock.lap("aggregation"):
            return super()._answer(hits, cell_weights, wide)

    def _calibrate(self, answers):
        with self.clock.lap("calibration"):
            return super()._calibrate(answers)


TIMED_GALLERIES: dict[int, TimedGallery] = {}


def locate_once(services, data: bytes, clock: Clock, features=None) -> dict:
    """Bytes -> answer dict, as POST /v1/locate runs it (default k, aggregator, all collections); given
    `features`, those stand in for the forward pass."""
    with clock.lap("total"):
        with clock.lap("decode"):
            image = to_rgb(open_image(data, services.settings.max_pixels, min_side=QUERY_DECODE_SIDE))
            digest = sha256_hex(data)
        with clock.lap("serving()"):
            embedder, gallery = services.serving()
        timed = TIMED_GALLERIES.setdefault(id(gallery), TimedGallery(gallery, clock))  # one per store, as served
        with clock.lap("Locator()"):
            locator = TimedLocator(embedder, timed, clock=clock, home=services.settings.home)
        with clock.lap("check_ready()"):
            services.check_ready(locator)
        with clock.lap("batched features"):
            features = services.features(embedder, [image]) if features is None else features
        answer = locator.locate_features(features, [digest])[0]
        with clock.lap("to_dict()"):
            return answer.to_dict()


class Forward:
    """The baseline: the backbone on one photo, run on one thread (`through(images)`: a batcher's) and timed inside
    it, so the hand-off to that thread is not counted."""
    def __init__(self, through, image, clock: Clock):
        self.through, self.image, self.clock, self.times = through, image, clock, []

    def __call__(self) -> None:
        self.through([self.image])
        self.times.append(self.clock.laps["preprocess+backbone"].pop())


def in_process(data: bytes, repeats: int) -> tuple[Clock, list[float], dict, Embedder]:
    """Services started as a server starts them (the model's batcher running TimedEmbedder), then warm locates
    alternating with the baseline on the same batcher thread; the start and the first locate after it are
    reported apart."""
    clock, image, settings, start = Clock(), to_rgb(open_image(data)), Settings(), time.perf_counter()
    services = build_services(settings, TimedEmbedder(Embedder.from_settings(settings), clock))
    services.start()
    started = time.perf_counter() - start
    cold = seconds(lambda: locate_once(services, data, clock))
    first = locate_once(services, data, clock)
    clock.laps.clear()
    baseline = Forward(lambda images: services.features(services.embedder, images), image, clock)
    alternate(lambda: locate_once(services, data, clock), baseline, repeats)
    clock.laps = {name: laps[WARMUP:] for name, laps in clock.laps.items()}
    between = [t - f for t, f in zip(clock.laps["total"], clock.laps["batched features"])]
    # all but the forward pass, back to back on the query's features: with the caches as that work leaves them
    hot, features = Clock(), services.features(services.embedder, [image])
    TIMED_GALLERIES.clear()  # its searches timed on this clock
    for _ in range(repeats):
        locate_once(services, data, hot, features)
    clock.laps["batcher hop"] = [b - f for b, f in zip(clock.laps.pop("batched features"),
                                                       clock.laps["preprocess+backbone"])]
    # the backbone back to back, nothing between calls: its best case, for reference (ratios use the alternated one)
    back_to_back = Forward(baseline.through, image, clock)
    for _ in range(repeats):
        back_to_back()
    services.close()  # the embedded gallery admits one process at a time: the server opens it next
    embedder = Embedder(services.runtime.embedder.backbone)  # the same backbone, for the HTTP phase's baseline
    rest = {"between_forward_passes": stats(between), "back_to_back": stats(hot.laps["total"][WARMUP:])}
    return clock, baseline.times[WARMUP:], {"start_s": round(started, 3), "cold_first_locate_s": round(cold, 3),
                                            "answer": first, "back_to_back": stats(back_to_back.times),
                                            "rest": rest}, embedder


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
    """Warm POSTs, one body built once and sent on one kept-alive connection, alternating with the baseline on
    a batcher thread of this process (whose gallery is closed by now)."""
    clock = Clock()
    forward = Batcher(TimedEmbedder(embedder, clock).features, name="bench-baseline")
    baseline = Forward(forward, to_rgb(open_image(data)), clock)
    with server(env, work) as (client, started, _):
        request = client.build_request("POST", "/v1/locate", files={"photo": (query.name, data, "image/jpeg")})
        body, headers = request.read(), dict(request.headers)
        connection = http.client.HTTPConnection(client.base_url.host, client.base_url.port, timeout=120)

        def post() -> bytes:
            connection.request("POST", "/v1/locate", body=body, headers=headers)
            response = connection.getresponse()
            answer = response.read()
            if response.status != 200:
                raise RuntimeError(f"POST /v1/locate answered {response.status}: {answer[:500]!r}")
            return answer

        start = time.perf_counter()
        answer = json.loads(post())
        cold = time.perf_counter() - start
        http_times, _ = alternate(post, baseline, repeats)
        connection.close()
    forward.close()
    return {"http": http_times, "baseline": baseline.times[WARMUP:], "server_up_s": round(started, 3),
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
    with watch.phase("index"):  # in a subprocess: no thread of this one runs the model before the baseline's
        subprocess.run([str(ROOT / ".venv/bin/geoloc"), "index", str(gallery_csv), "--collection", "bench"], env=env,
                       check=True, capture_output=True)
        with Runtime(Settings()) as runtime:
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
        "in_process_all_but_forward_pass": cold["rest"],
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
    rest = {f"all but the forward pass, {k.replace('_', ' ')}": v
            for k, v in result["in_process_all_but_forward_pass"].items()}
    for name, s in {**result["in_process_pieces"], **rest}.items():
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
