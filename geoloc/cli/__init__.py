"""The `geoloc` command line: index, locate, collections, drop (and the model and service commands)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from geoloc.gallery.base import GalleryError
from geoloc.locate import LocateError
from geoloc.settings import Settings
from geoloc.aggregation import AGGREGATORS
from geoloc.ingest.images import ImageError
from geoloc.ingest.sources import SourceError

USER_ERRORS = (SourceError, GalleryError, LocateError, ImageError, FileNotFoundError, ValueError)


class UserError(Exception):
    """Something the user can fix; printed as one line, exit status 2."""


def _settings(args) -> Settings:
    """Settings from the environment, overridden by the model options given on the command line."""
    settings = Settings()
    for option in ("bundle", "backbone", "checkpoint", "device", "batch_size"):
        if getattr(args, option, None):
            setattr(settings, option, getattr(args, option))
    return settings


def _open(settings: Settings, embedder=None):
    from geoloc.gallery.open import open_gallery

    return open_gallery(settings, dim=embedder.dim if embedder else None)


def _embedder(settings: Settings):
    from geoloc.embedding import Embedder

    return Embedder.from_settings(settings)


def cmd_index(args) -> int:
    from geoloc.indexing import index_records
    from geoloc.names import check_collection_name
    from geoloc.ingest.sources import count_items, iter_source

    check_collection_name(args.collection)
    path = Path(args.source)
    total = count_items(path)
    settings = _settings(args)
    embedder = _embedder(settings)
    with _open(settings, embedder) as gallery, tqdm(total=total, unit="photo", desc="indexing") as bar:
        report = index_records(iter_source(path), args.collection, gallery, embedder,
                               batch_size=settings.batch_size, source=str(path),
                               progress=lambda _: bar.update())
        in_collection = gallery.collections().get(args.collection, 0)
    saved = report.save(settings.reports_dir)
    print(f"indexed {report.indexed} photos into '{args.collection}' ({in_collection} in the collection) "
          f"in {report.seconds:.1f} s")
    for reason, count in sorted(report.skipped.items(), key=lambda kv: -kv[1]):
        print(f"  skipped {count}: {reason}")
    print(f"report: {saved}")
    return 0


def _query_batches(names: list[str], batch_size: int):
    """(name, image or None, truth or None, error) in batches: CSV manifests carry truth, photos don't."""
    from geoloc.ingest.images import open_image, to_rgb
    from geoloc.ingest.records import PhotoRecord
    from geoloc.ingest.sources import iter_source

    def items():
        for name in names:
            if name.lower().endswith(".csv"):
                for record in iter_source(name):
                    if isinstance(record, PhotoRecord):
                        yield record.source, record.image, (record.lat, record.lon), None
                    else:
                        yield record.source, None, None, record.reason
                continue
            try:
                yield name, to_rgb(open_image(Path(name).read_bytes())), None, None
            except (OSError, ImageError) as exc:
                yield name, None, None, getattr(exc, "strerror", None) or str(exc)

    batch = []
    for item in items():
        batch.append(item)
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def cmd_locate(args) -> int:
    from geoloc.evaluation import accuracy, errors_km
    from geoloc.locate import Locator
    from geoloc.ingest.sources import count_items

    settings = _settings(args)
    embedder = _embedder(settings)
    failures, results, errors = 0, [], []
    with _open(settings, embedder) as gallery:
        locator = Locator(embedder, gallery, k=args.k, aggregator=args.aggregator,
                          collections=args.collections, top_cells=args.top_cells, head=args.head)
        locator.check_ready()
        total = sum(count_items(Path(n)) if n.lower().endswith(".csv") else 1 for n in args.images)
        bar = tqdm(total=total, unit="photo", desc="locating", disable=total < 2 * settings.batch_size)
        for batch in _query_batches(args.images, settings.batch_size):
            bar.update(len(batch))
            for name, _, _, error in batch:
                if error:
                    print(f"geoloc: error: {name}: cannot use this photo ({error})", file=sys.stderr)
                    failures += 1
            usable = [item for item in batch if item[1] is not None]
            answers = locator.locate([image for _, image, _, _ in usable]) if usable else []
            for (name, _, truth, _), answer in zip(usable, answers):
                result = {"image": name, **answer.to_dict()}
                if truth:
                    result["error_km"] = float(errors_km(answer.lat, answer.lon, *truth))
                    errors.append(result["error_km"])
                results.append(result)
                if not args.json:
                    _print_answer(name, answer, result.get("error_km"))
        bar.close()
    summary = accuracy(errors) if errors else None
    if args.json:
        print(json.dumps({"answers": results, "accuracy": summary}, indent=2))
    elif summary:
        print("accuracy over %d photos with known location: " % summary["n"]
              + ", ".join(f"{k} {v:.1f}%" for k, v in summary.items() if k.endswith("km") and k != "median_km")
              + f"; median error {summary['median_km']:.0f} km")
    return 1 if failures else 0


def _print_answer(name: str, answer, error_km: float | None = None) -> None:
    truth = "" if error_km is None else f"  [{error_km:.1f} km from the truth]"
    print(f"{name}: {answer.lat:.5f}, {answer.lon:.5f}  "
          f"({answer.method}, cluster of {answer.cluster_size}/{len(answer.neighbours)}){truth}")
    if answer.cell:
        print(f"  cell {answer.cell['token']} p={answer.cell['probability']:.2f}  "
              f"confidence {answer.confidence:.2f}")
    for n in answer.neighbours[:5]:
        print(f"  {n.similarity:6.3f}  {n.km:8.1f} km  [{n.collection}] {n.source}")


def cmd_collections(args) -> int:
    with _open(_settings(args)) as gallery:
        names = gallery.collections()
    if not names:
        print("the gallery is empty")
    for name, count in sorted(names.items()):
        print(f"{name}\t{count}")
    return 0


def cmd_drop(args) -> int:
    with _open(_settings(args)) as gallery:
        if args.name not in gallery.collections():
            raise UserError(f"no collection named '{args.name}'")
        removed = gallery.delete_collection(args.name)
    print(f"dropped '{args.name}': {removed} photos removed")
    return 0


def cmd_split(args) -> int:
    from geoloc.splits import split_manifest

    gallery_csv, queries_csv, counts = split_manifest(Path(args.manifest), Path(args.out), args.by,
                                                      args.query_fraction, args.seed)
    print(f"{counts['gallery']} gallery photos -> {gallery_csv}")
    print(f"{counts['queries']} query photos -> {queries_csv}  (no '{args.by}' on both sides)")
    return 0


def cmd_features(args) -> int:
    from geoloc.features import extract_features
    from geoloc.ingest.sources import count_items
    from geoloc.models.backbone import Backbone

    settings = _settings(args)
    total = count_items(Path(args.source))
    out = args.out if args.out.endswith(".npz") else args.out + ".npz"
    backbone = Backbone(settings.backbone, checkpoint=settings.checkpoint, device=settings.device,
                        batch_size=settings.batch_size)
    with tqdm(total=total, unit="photo", desc="features") as bar:
        features, skipped = extract_features(args.source, out, backbone, progress=bar.update)
    print(f"{len(features)} photos x {features.features.shape[1]} features ({features.model_id}) -> {out}")
    for reason, count in sorted(skipped.items(), key=lambda kv: -kv[1]):
        print(f"  skipped {count}: {reason}")
    return 0


def cmd_train(args) -> int:
    from geoloc.features import load_features
    from geoloc.models.train import train_bundle

    features = load_features(args.features)
    kinds = tuple(k.strip() for k in args.heads.split(",") if k.strip())
    print(f"training on {len(features)} photos ({features.model_id}): heads {', '.join(kinds)} and the RRM")
    bundle = train_bundle(features, args.out, kinds=kinds, seed=args.seed, device=_settings(args).device)
    for name, metrics in bundle.manifest["metrics"].items():
        top1 = metrics.get("val_top1")
        shown = "n/a" if top1 is None else f"{100 * top1:.1f}%"
        print(f"  {name}: {metrics.get('epochs')} epochs, validation top-1 cell {shown}")
    fine = bundle.hierarchy.fine
    print(f"bundle {bundle.bundle_id[:12]} -> {args.out} ({len(fine)} fine cells); use it with --bundle "
          f"{args.out} or GEOLOC_BUNDLE, after indexing the gallery with it")
    return 0


def cmd_eval(args) -> int:
    from geoloc.crossval import cross_validate, markdown, write_report
    from geoloc.features import load_features

    features = load_features(args.features)
    report = cross_validate(features, folds=args.folds, seed=args.seed,
                            progress=lambda line: print(line, file=sys.stderr))
    paths = write_report(report, Path(args.out))
    print(markdown(report))
    print("written: " + ", ".join(str(p) for p in paths.values()))
    return 0


def cmd_prune(args) -> int:
    import time

    from geoloc.job_store import open_job_store
    from geoloc.jobs import InProcessRunner, JobContext, Jobs

    if not (args.unplaceable or args.box or args.radius):
        raise UserError("say what to prune: --unplaceable, --box S W N E and/or --radius LAT LON KM")
    settings = _settings(args)
    if args.unplaceable and not settings.bundle:
        raise UserError("--unplaceable needs the model bundle whose classifier decides: --bundle DIR")
    embedder = _embedder(settings)
    with _open(settings, embedder) as gallery:
        if args.collection not in gallery.collections():
            raise UserError(f"no collection named '{args.collection}'")
        store = open_job_store(settings)
        runner = InProcessRunner(JobContext(settings, embedder, gallery, store))
        try:
            job_id = Jobs(store, runner, settings.job_batch).prune(gallery, args.collection, "cli", box=args.box,
                                                                   radius=args.radius, unplaceable=args.unplaceable)
            with tqdm(total=store.get(job_id)["total"], unit="photo", desc="pruning") as bar:
                while (job := store.get(job_id))["state"] not in ("succeeded", "failed"):
                    bar.n = job["done"] + job["skipped"] + job["failed"]
                    bar.refresh()
                    time.sleep(0.2)
        finally:
            runner.close()
    print(f"removed {job['removed']} of {job['total']} photos checked in '{args.collection}'"
          + (f"; skipped {job['skipped']} ({', '.join(f'{k}: {v}' for k, v in job['reasons'].items())})"
             if job["skipped"] else ""))
    return 0 if job["state"] == "succeeded" else 1


def cmd_serve(args) -> int:
    import uvicorn

    from geoloc.keys import KeyStore
    from geoloc.search_api.app import create_app

    settings = _settings(args)
    if settings.require_keys and not KeyStore(settings.keys_path).list():
        print("geoloc: no API keys yet: create one with `geoloc keys create --admin`", file=sys.stderr)
    if not settings.broker_url:
        print("geoloc: no broker (GEOLOC_BROKER_URL): jobs run in this process", file=sys.stderr)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level)
    return 0


def cmd_worker(args) -> int:
    import os

    if not Settings().broker_url:
        raise UserError("no broker: set GEOLOC_BROKER_URL (e.g. redis://localhost:6379/0); without one, "
                        "`geoloc serve` runs jobs itself")
    # the pool processes build their settings from the environment
    for name, value in (("GEOLOC_BUNDLE", args.bundle), ("GEOLOC_DEVICE", args.device),
                        ("GEOLOC_BATCH_SIZE", args.batch_size)):
        if value:
            os.environ[name] = str(value)
    from geoloc.workers.app import QUEUE, app

    app.worker_main(["worker", f"--loglevel={args.log_level}", f"--concurrency={args.concurrency}",
                     "--pool=prefork", f"--hostname=geoloc-{os.getpid()}@%h", f"--queues={QUEUE}"])
    return 0


def cmd_keys_create(args) -> int:
    from geoloc.keys import ADMIN, READER, KeyStore

    collections = [c.strip() for c in (args.collections or "").split(",") if c.strip()]
    key, token = KeyStore(Settings().keys_path).create(ADMIN if args.admin else READER, collections, args.name)
    scope = "every collection" if key.is_admin else ", ".join(key.collections)
    print(f"created {key.role} key {key.id} ({scope}); the token below is shown only once", file=sys.stderr)
    print(token)
    return 0


def cmd_keys_list(args) -> int:
    from geoloc.keys import KeyStore

    keys = KeyStore(Settings().keys_path).list()
    if args.json:
        print(json.dumps([k.public() for k in keys], indent=2))
        return 0
    if not keys:
        print("no keys yet: geoloc keys create --admin")
    for k in keys:
        scope = "*" if k.is_admin else ",".join(k.collections)
        state = f"revoked {k.revoked}" if k.revoked else "active"
        print(f"{k.id}\t{k.role}\t{scope}\t{k.created}\t{state}\t{k.name}")
    return 0


def cmd_keys_revoke(args) -> int:
    from geoloc.keys import KeyStore

    key = KeyStore(Settings().keys_path).revoke(args.id)
    print(f"revoked {key.role} key {key.id}")
    return 0


def _head_name(name: str) -> str:
    """A registered classifier head (imported only when asked for: the registry lives beside torch)."""
    from geoloc.models.heads import HEADS

    try:
        HEADS.get(name)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geoloc", description="Where was this photo taken?")
    sub = parser.add_subparsers(dest="command", required=True)

    def model_options(p):
        p.add_argument("--bundle", help="model bundle directory (classifier + RRM); default: retrieval only")
        p.add_argument("--backbone", help="timm model name (default tf_efficientnet_lite0, or GEOLOC_BACKBONE)")
        p.add_argument("--checkpoint", help="local weights for the backbone (.safetensors or a torch state dict)")
        p.add_argument("--device", help="auto, cpu, cuda, cuda:1 ... (default auto)")
        p.add_argument("--batch-size", type=int, help="photos per backbone batch")

    p = sub.add_parser("index", help="index a folder of geotagged photos or a CSV manifest")
    p.add_argument("source", help="folder (recursive, EXIF GPS) or CSV manifest filename,lat,lon[,...]")
    p.add_argument("--collection", required=True, help="reference collection to add the photos to")
    model_options(p)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("locate", help="estimate where photos were taken")
    p.add_argument("images", nargs="+", help="photos, or CSV manifests (their lat/lon are scored)")
    p.add_argument("--json", action="store_true", help="print answers as JSON")
    p.add_argument("-k", type=int, default=10, help="neighbours to aggregate (default 10)")
    p.add_argument("--aggregator", default="cluster", choices=AGGREGATORS.names())
    p.add_argument("--collections", nargs="*", help="search only these collections")
    p.add_argument("--top-cells", type=int, default=1, help="with a bundle: search the N likeliest cells")
    p.add_argument("--head", type=_head_name, help="with a bundle: its classifier (default: its own)")
    model_options(p)
    p.set_defaults(func=cmd_locate)

    p = sub.add_parser("split", help="split a CSV manifest into gallery and query manifests by a column")
    p.add_argument("manifest")
    p.add_argument("--out", required=True, help="folder for gallery.csv and queries.csv")
    p.add_argument("--by", default="photographer", help="column whose values never straddle the split")
    p.add_argument("--query-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("features", help="cache backbone features of a labelled source (resumable)")
    p.add_argument("source", help="folder or CSV manifest (a 'photographer' column is kept for splits)")
    p.add_argument("--out", required=True, help="output .npz file")
    model_options(p)
    p.set_defaults(func=cmd_features)

    p = sub.add_parser("train", help="train the cell classifiers and the RRM on a feature cache -> a bundle")
    p.add_argument("features", help="a .npz from `geoloc features` (with a photographer column)")
    p.add_argument("--out", required=True, help="bundle directory to create")
    p.add_argument("--heads", default="ce,hc,mvmf", help="heads to train (default ce,hc,mvmf; SwC uses mvmf)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="auto, cpu, cuda ... (default auto)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="photographer-disjoint k-fold evaluation of every method")
    p.add_argument("features", help="a .npz from `geoloc features` (with a photographer column)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="eval", help="folder for eval.md, eval.json and eval.png")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("prune", help="remove photos from a collection: unplaceable ones, or a region")
    p.add_argument("--collection", required=True)
    p.add_argument("--unplaceable", action="store_true",
                   help="photos the bundle's classifier puts outside their own cell (paper 3.3.3)")
    p.add_argument("--box", nargs=4, type=float, metavar=("SOUTH", "WEST", "NORTH", "EAST"))
    p.add_argument("--radius", nargs=3, type=float, metavar=("LAT", "LON", "KM"))
    model_options(p)
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("collections", help="list reference collections and their photo counts")
    p.set_defaults(func=cmd_collections)

    p = sub.add_parser("drop", help="delete a reference collection")
    p.add_argument("name")
    p.set_defaults(func=cmd_drop)

    p = sub.add_parser("serve", help="run the HTTP API (and, with no broker, its jobs)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--log-level", default="info")
    model_options(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="run a Celery worker for the API's jobs (needs GEOLOC_BROKER_URL)")
    p.add_argument("--concurrency", type=int, default=1, help="pool processes, each with its own model "
                                                              "(default 1: one per GPU)")
    p.add_argument("--log-level", default="info")
    model_options(p)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("keys", help="manage API keys (stored hashed under the data home)")
    keys = p.add_subparsers(dest="keys_command", required=True)
    k = keys.add_parser("create", help="create a key and print its token (shown once)")
    role = k.add_mutually_exclusive_group(required=True)
    role.add_argument("--admin", action="store_true", help="manages every collection")
    role.add_argument("--reader", action="store_true", help="locates and searches granted collections")
    k.add_argument("--collections", help="reader: comma-separated collections it may search")
    k.add_argument("--name", default="", help="a note on who or what uses the key")
    k.set_defaults(func=cmd_keys_create)
    k = keys.add_parser("list", help="list keys (never their tokens)")
    k.add_argument("--json", action="store_true")
    k.set_defaults(func=cmd_keys_list)
    k = keys.add_parser("revoke", help="revoke a key at once")
    k.add_argument("id")
    k.set_defaults(func=cmd_keys_revoke)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UserError, *USER_ERRORS) as exc:
        print(f"geoloc: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("geoloc: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
