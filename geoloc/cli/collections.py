"""Reference collections: index photos into one, list them, drop one (after asking), prune one (or preview it)."""

from __future__ import annotations

import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from geoloc.cli.common import (UserError, add_command, add_model_options, confirm, print_counts, print_json, result,
                               runtime_from)
from geoloc.cli.dry_run import RecordingGallery
from geoloc.job_store import FileJobStore


def cmd_index(args) -> int:
    from geoloc.indexing import index_source
    from geoloc.ingest.sources import count_items
    from geoloc.names import check_collection_name

    check_collection_name(args.collection)
    path = Path(args.source)
    total = count_items(path)
    with runtime_from(args) as runtime, tqdm(total=total, unit="photo", desc="indexing") as bar:
        gallery = runtime.gallery()
        report = index_source(path, args.collection, gallery, runtime.embedder, runtime.settings,
                              progress=lambda _: bar.update())
        in_collection = gallery.collections().get(args.collection, 0)
        saved = report.save(runtime.settings.reports_dir)
        if gallery.index.pending:  # closing would discard it; searches of a large gallery want it
            print("building the gallery's search index (minutes per 100,000 photos; Ctrl-C keeps the gallery as it "
                  "is, `geoloc maintenance index` builds it later)", file=sys.stderr)
            gallery.index.settle()
    if args.json:
        print_json({**report.to_dict(), "in_collection": in_collection, "report": str(saved)})
        return 0
    print(f"indexed {report.indexed} photos into '{args.collection}' ({in_collection} in the collection) "
          f"in {report.seconds:.1f} s")
    print_counts(report.skipped)
    print(f"report: {saved}")
    return 0


def cmd_collections(args) -> int:
    with runtime_from(args).open_gallery() as gallery:
        names = gallery.collections()
    if args.json:
        print_json({"collections": [{"name": name, "photos": count} for name, count in sorted(names.items())]})
        return 0
    if not names:
        print("the gallery is empty")
    for name, count in sorted(names.items()):
        print(f"{name}\t{count}")
    return 0


def cmd_drop(args) -> int:
    """Everywhere it was stored: every model's store, its unfinished jobs, the originals nothing else needs."""
    from geoloc import retention
    from geoloc.ingest.originals import OriginalStore

    with runtime_from(args) as runtime:
        stores = runtime.every_store()
        count = max((store.collections().get(args.name, 0) for store in stores), default=0)
        if not count:
            raise UserError(f"no collection named '{args.name}'")
        if not confirm(f"delete collection '{args.name}' and its {count} photos from the gallery", args.yes):
            print("nothing dropped", file=sys.stderr)
            return 1
        removed = retention.delete_collection(stores, runtime.job_store(), OriginalStore(runtime.settings.spool_dir),
                                              args.name)
    result(args, {"collection": args.name, "removed": removed}, f"dropped '{args.name}': {removed} photos removed")
    return 0


def cmd_prune(args) -> int:
    if not (args.unplaceable or args.box or args.radius):
        raise UserError("say what to prune: --unplaceable, --box S W N E and/or --radius LAT LON KM")
    with runtime_from(args) as runtime:
        if args.unplaceable and not runtime.settings.bundle:
            raise UserError("--unplaceable needs the model bundle whose classifier decides: --bundle DIR")
        if args.collection not in runtime.gallery().collections():
            raise UserError(f"no collection named '{args.collection}'")
        job, preview = _run_prune(runtime, args)
    if args.json:
        print_json({**job, **({"examples": preview} if args.dry_run else {})})
    else:
        _print_prune(args.collection, job, preview if args.dry_run else None)
    return 0 if job["state"] == "succeeded" else 1


def _run_prune(runtime, args) -> tuple[dict, list[dict]]:
    """The prune job, run here (the command holds the gallery). A dry run gives it a gallery that only
    records what it would delete, and a job store of its own, thrown away: nothing in the gallery or the
    job history changes. Returns the job's final record and, for a dry run, a few of the photos it names."""
    from geoloc.jobs import InProcessRunner, Jobs

    gallery = RecordingGallery(runtime.gallery()) if args.dry_run else runtime.gallery()
    with tempfile.TemporaryDirectory(prefix="geoloc-dry-run-") if args.dry_run else nullcontext() as scratch:
        store = FileJobStore(scratch) if args.dry_run else runtime.job_store()
        runner = InProcessRunner(lambda: replace(runtime.job_context(), gallery=gallery, jobs=store), store)
        try:
            job_id = Jobs(store, runner, runtime.settings.job_batch).prune(
                gallery, args.collection, "cli", box=args.box, radius=args.radius, unplaceable=args.unplaceable)
            job = follow_job(store, job_id, "checking" if args.dry_run else "pruning")
        finally:
            runner.close()
    if not args.dry_run:
        return job, []
    job = {**{k: v for k, v in job.items() if k != "id"}, "dry_run": True, "removed": 0,
           "would_remove": gallery.would_delete}
    return job, [{"id": h.id, "source": h.payload.get("source"), "lat": h.lat, "lon": h.lon} for h in gallery.examples]


def _print_prune(collection: str, job: dict, preview: list[dict] | None) -> None:
    verb, count = ("would remove", job["would_remove"]) if preview is not None else ("removed", job["removed"])
    print(f"{verb} {count} of {job['total']} photos checked in '{collection}'"
          + (f"; skipped {job['skipped']} ({', '.join(f'{k}: {v}' for k, v in job['reasons'].items())})"
             if job["skipped"] else ""))
    for example in preview or []:
        print(f"  {example['source']}  {example['lat']:.5f}, {example['lon']:.5f}")
    if preview is not None:
        print("dry run: nothing was removed")


def follow_job(store, job_id: str, desc: str) -> dict:
    """Show a job's progress until it ends; its final record."""
    with tqdm(total=store.get(job_id)["total"], unit="photo", desc=desc) as bar:
        while (job := store.get(job_id))["state"] in ("queued", "running"):
            bar.n = job["done"] + job["skipped"] + job["failed"]
            bar.refresh()
            time.sleep(0.2)
    return job


def register(sub) -> None:
    p = add_command(sub, "index", cmd_index, help="index a folder of geotagged photos or a CSV manifest")
    p.add_argument("source", help="folder (recursive, EXIF GPS) or CSV manifest filename,lat,lon[,...]")
    p.add_argument("--collection", required=True, help="reference collection to add the photos to")
    add_model_options(p)

    p = add_command(sub, "collections", cmd_collections, help="list reference collections and their photo counts")

    p = add_command(sub, "drop", cmd_drop, help="delete a reference collection (asks first, showing how many photos)")
    p.add_argument("name")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask (needed when stdin is not a terminal)")

    p = add_command(sub, "prune", cmd_prune, help="remove photos from a collection: unplaceable ones, or a region")
    p.add_argument("--collection", required=True)
    p.add_argument("--unplaceable", action="store_true",
                   help="photos the bundle's classifier puts outside their own cell (paper 3.3.3)")
    p.add_argument("--box", nargs=4, type=float, metavar=("SOUTH", "WEST", "NORTH", "EAST"))
    p.add_argument("--radius", nargs=3, type=float, metavar=("LAT", "LON", "KM"))
    p.add_argument("--dry-run", action="store_true",
                   help="show how many photos would go, and a few of them; remove nothing")
    add_model_options(p)
