"""Throughput of the backbone alone vs `geoloc index` end to end, on the same real photos, in one run.

    .venv/bin/python bench/embed.py [--photos 256] [--manifest ../shared/data/im2gps3k-dev/manifest.csv]

Backbone alone: decoded photos in memory, features in batches (the ceiling), as the product runs it (a frozen
TorchScript graph from its second pass, models/tracing.py; on a CPU, forward passes of at most
models.device.CPU_PASS photos), layer by layer (GEOLOC_TRACE_MODEL=0), and traced in passes of each of
--pass-sizes photos (default: the whole batch in one pass, as before CPU_PASS).
Index in-process: decode + validate + features + upsert into a fresh embedded gallery.
Index CLI: the `geoloc index` command as a user runs it, start-up and model load included.
Ratios are against the backbone measured in the same run; results go to bench/results/embed.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from geoloc.gallery.edge import EdgeGallery  # noqa: E402
from geoloc.models import encoding  # noqa: E402
from geoloc.embedding import Embedder  # noqa: E402
from geoloc.indexing import index_records  # noqa: E402
from geoloc.ingest.records import PhotoRecord  # noqa: E402
from geoloc.ingest.sources import iter_source, resolve_manifest_path  # noqa: E402
from geoloc.models.backbone import Backbone  # noqa: E402


def slice_manifest(manifest: Path, n: int, out: Path) -> Path:
    with manifest.open(newline="") as handle:
        rows = list(csv.DictReader(handle))[:n]
    for row in rows:
        row["filename"] = str(resolve_manifest_path(manifest, row["filename"]).resolve())
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out


def backbone_rate(backbone: Backbone, images: list, batch_size: int) -> float:
    """Photos/s of `backbone.features` over `images`, after two warm-up batches (the second traces, where traced)."""
    for _ in range(2):
        backbone.features(images[:batch_size])
    start = time.perf_counter()
    backbone.features(images)
    return len(images) / (time.perf_counter() - start)


def pass_rate(images: list, batch_size: int, photos_per_pass: int) -> float:
    """backbone_rate with each batch run in passes of `photos_per_pass` photos, whatever CPU_PASS says."""
    with mock.patch.object(encoding, "pass_size", lambda device, size: min(size, photos_per_pass)):
        return backbone_rate(Backbone(batch_size=batch_size), images, batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", default=str(ROOT.parent / "shared/data/im2gps3k-dev/manifest.csv"))
    parser.add_argument("--photos", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--pass-sizes", default="",
                        help="photos per forward pass to time the backbone at, comma-separated (default: the batch)")
    args = parser.parse_args()
    sizes = [int(size) for size in args.pass_sizes.split(",")] if args.pass_sizes else [args.batch_size]

    work = Path(tempfile.mkdtemp(prefix="geoloc-bench-"))
    manifest = slice_manifest(Path(args.manifest), args.photos, work / "slice.csv")
    images = [r.image for r in iter_source(manifest) if isinstance(r, PhotoRecord)]
    backbone = Backbone(batch_size=args.batch_size)
    layered_rate = backbone_rate(Backbone(batch_size=args.batch_size, trace=False), images, args.batch_size)
    rate = backbone_rate(backbone, images, args.batch_size)
    by_pass = {size: pass_rate(images, args.batch_size, size) for size in sizes}
    embedder = Embedder(backbone)
    with EdgeGallery(work / "gallery", embedder.dim) as gallery:
        report = index_records(iter_source(manifest), "bench", gallery, embedder, batch_size=args.batch_size)
    pipeline_rate = report.indexed / report.seconds

    env = dict(os.environ, GEOLOC_HOME=str(work / "cli-home"), GEOLOC_BATCH_SIZE=str(args.batch_size))
    start = time.perf_counter()
    subprocess.run([str(ROOT / ".venv/bin/geoloc"), "index", str(manifest), "--collection", "bench"],
                   env=env, check=True, capture_output=True)
    cli_rate = report.indexed / (time.perf_counter() - start)

    result = {
        "photos": len(images), "batch_size": args.batch_size, "device": str(backbone.device),
        "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "backbone_img_per_s": round(rate, 1),
        "backbone_layer_by_layer_img_per_s": round(layered_rate, 1),
        "backbone_by_photos_per_pass_img_per_s": {str(size): round(r, 1) for size, r in by_pass.items()},
        "index_in_process_img_per_s": round(pipeline_rate, 1),
        "index_cli_img_per_s": round(cli_rate, 1),
        "backbone_layer_by_layer_vs_backbone": round(layered_rate / rate, 3),
        "index_in_process_vs_backbone": round(pipeline_rate / rate, 3),
        "index_cli_vs_backbone": round(cli_rate / rate, 3),
    }
    out = ROOT / "bench/results/embed.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("| measure | photos/s | ratio to backbone |\n|---|---|---|")
    print(f"| backbone alone (decoded, batch {args.batch_size}) | {rate:.1f} | 1.00 |")
    print(f"| backbone alone, layer by layer | {layered_rate:.1f} | {layered_rate / rate:.2f} |")
    for size, r in by_pass.items():
        print(f"| backbone alone, passes of {size} | {r:.1f} | {r / rate:.2f} |")
    print(f"| index in-process (decode+embed+upsert) | {pipeline_rate:.1f} | {pipeline_rate / rate:.2f} |")
    print(f"| `geoloc index` CLI (incl. start-up) | {cli_rate:.1f} | {cli_rate / rate:.2f} |")


if __name__ == "__main__":
    main()
