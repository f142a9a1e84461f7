"""Reference collections: index photos into one, list them, drop one, prune one."""

from __future__ import annotations

import time
from pathlib import Path

from tqdm import tqdm

from geoloc.cli.common import UserError, add_model_options, print_counts, runtime_from


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
    print(f"indexed {report.indexed} photos into '{args.collection}' ({in_collection} in the collection) "
          f"in {report.seconds:.1f} s")
    print_counts(report.skipped)
    print(f"report: {saved}")
    return 0


def cmd_collections(args) -> int:
    with runtime_from(args).open_gallery() as gallery:
        names = gallery.collections()
    if not names:
        print("the gallery is empty")
    for name, count in sorted(names.items()):
        print(f"{name}\t{count}")
    return 0


def cmd_drop(args) -> int:
    with runtime_from(args).open_gallery() as gallery:
        if args.name not in gallery.collections():
            raise UserError(f"no collection named '{args.name}'")
        removed = gallery.delete_collection(args.name)
    print(f"dropped '{args.name}': {removed} photos removed")
    return 0


def cmd_prune(args) -> int:
    from geoloc.jobs import InProcessRunner, Jobs

    if not (args.unplaceable or args.box or args.radius):
        raise UserError("say what to prune: --unplaceable, --box S W N E and/or --radius LAT LON KM")
    with runtime_from(args) as runtime:
        if args.unplaceable and not runtime.settings.bundle:
            raise UserError("--unplaceable needs the model bundle whose classifier decides: --bundle DIR")
        gallery, store = runtime.gallery(), runtime.job_store()
        if args.collection not in gallery.collections():
            raise UserError(f"no collection named '{args.collection}'")
        runner = InProcessRunner(runtime.job_context, store)  # the command holds the gallery: it runs the job itself
        try:
            job_id = Jobs(store, runner, runtime.settings.job_batch).prune(
                gallery, args.collection, "cli", box=args.box, radius=args.radius, unplaceable=args.unplaceable)
            job = follow_job(store, job_id, "pruning")
        finally:
            runner.close()
    print(f"removed {job['removed']} of {job['total']} photos checked in '{args.collection}'"
          + (f"; skipped {job['skipped']} ({', '.join(f'{k}: {v}' for k, v in job['reasons'].items())})"
             if job["skipped"] else ""))
    return 0 if job["state"] == "succeeded" else 1


def follow_job(store, job_id: str, desc: str) -> dict:
    """Show a job's progress until it ends; its final record."""
    with tqdm(total=store.get(job_id)["total"], unit="photo", desc=desc) as bar:
        while (job := store.get(job_id))["state"] not in ("succeeded", "failed"):
            bar.n = job["done"] + job["skipped"] + job["failed"]
            bar.refresh()
            time.sleep(0.2)
    return job


def register(sub) -> None:
    p = sub.add_parser("index", help="index a folder of geotagged photos or a CSV manifest")
    p.add_argument("source", help="folder (recursive, EXIF GPS) or CSV manifest filename,lat,lon[,...]")
    p.add_argument("--collection", required=True, help="reference collection to add the photos to")
    add_model_options(p)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("collections", help="list reference collections and their photo counts")
    p.set_defaults(func=cmd_collections)

    p = sub.add_parser("drop", help="delete a reference collection")
    p.add_argument("name")
    p.set_defaults(func=cmd_drop)

    p = sub.add_parser("prune", help="remove photos from a collection: unplaceable ones, or a region")
    p.add_argument("--collection", required=True)
    p.add_argument("--unplaceable", action="store_true",
                   help="photos the bundle's classifier puts outside their own cell (paper 3.3.3)")
    p.add_argument("--box", nargs=4, type=float, metavar=("SOUTH", "WEST", "NORTH", "EAST"))
    p.add_argument("--radius", nargs=3, type=float, metavar=("LAT", "LON", "KM"))
    add_model_options(p)
    p.set_defaults(func=cmd_prune)
