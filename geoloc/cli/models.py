"""`geoloc models`: the gallery's stores, one per embedding model; re-embed into a new one, switch, drop."""

from __future__ import annotations

import json

from geoloc.cli.collections import follow_job
from geoloc.cli.common import UserError, add_command, add_group, add_list_option, print_json, result
from geoloc.settings import DEFAULT_BACKBONE, Settings


def _stores(settings: Settings):
    from geoloc.gallery.stores import ModelStores

    return ModelStores(settings.gallery_dir)


def cmd_models_list(args) -> int:
    from geoloc.gallery.edge_meta import read_layout
    from geoloc.gallery.open import open_gallery

    settings = Settings()
    registry = _stores(settings).read()
    rows = []
    for model_id, entry in registry["stores"].items():
        with open_gallery(settings, entry["dim"], model_id) as store:
            rows.append({"model": model_id, "dim": entry["dim"], "serving": model_id == registry["serving"],
                         "collections": store.collections(), "encoder": entry["encoder"],
                         "layout": None if settings.qdrant_url else read_layout(settings.gallery_dir / entry["store"])})
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("the gallery holds no model yet: index some photos first")
    for row in [] if args.json else rows:
        photos = sum(row["collections"].values())
        print(f"{'*' if row['serving'] else ' '} {row['model']}\t{row['dim']}-d\t{photos} photos\t"
              + ", ".join(f"{k}={v}" for k, v in row["encoder"].items() if v) + _layout_text(row["layout"]))
    return 0


def _layout_text(layout: dict | None) -> str:
    if layout is None:
        return ""
    search = layout["search"]
    breadth = f", searches {search['hnsw_ef']} candidates" if search else ", never indexed"
    graph = f"graph m {layout['m']} ef_construct {layout['ef_construct']}" if layout["m"] else "the engine's graph"
    return f"\t{layout['vectors']}, {graph}{breadth}"


def cmd_models_reembed(args) -> int:
    """Fill the named model's store from the serving store's originals; queries switch when it is full."""
    from geoloc.jobs import InProcessRunner, Jobs
    from geoloc.runtime import Runtime

    target = {"backbone": args.backbone or DEFAULT_BACKBONE, "checkpoint": args.checkpoint, "bundle": args.bundle}
    with Runtime(Settings()) as runtime:
        gallery, store = runtime.gallery(), runtime.job_store()
        names = args.collections or sorted(gallery.collections())
        missing = set(names) - set(gallery.collections())
        if missing:
            raise UserError(f"no collection named {', '.join(sorted(missing))}")
        runner = InProcessRunner(runtime.job_context, store)
        jobs = []
        try:
            for name in names:
                job_id = Jobs(store, runner, runtime.settings.job_batch).reembed(gallery, name, "cli", target)
                jobs.append(job := follow_job(store, job_id, f"re-embedding {name}"))
                if not args.json:
                    print(f"{name}: {job['done']} of {job['total']} photos re-embedded"
                          + (f", skipped {job['skipped']} ({job['reasons']})" if job["skipped"] else ""))
        finally:
            runner.close()
        target_model = runtime.context_for_model(target).embedder.model_id
    serving = _stores(runtime.settings).serving()
    if args.json:
        print_json({"model": target_model, "serving": serving, "jobs": jobs})
    else:
        print(f"queries now use {serving}" if serving == target_model else
              f"queries still use {serving}: {target_model} does not hold every photo yet")
    return 0


def cmd_models_switch(args) -> int:
    try:
        _stores(Settings()).switch(args.model)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if args.json:
        print_json({"serving": args.model})
    else:
        print(f"queries now use {args.model}")
    return 0


def cmd_models_drop(args) -> int:
    from geoloc.gallery.open import open_gallery

    settings = Settings()
    stores = _stores(settings)
    entry = stores.read()["stores"].get(args.model)
    if entry is None:
        raise UserError(f"no store for model '{args.model}'")
    if stores.serving() == args.model:
        raise UserError(f"model '{args.model}' serves queries: switch to another before dropping it")
    with open_gallery(settings, entry["dim"], args.model) as store:
        removed = sum(store.delete_collection(name) for name in list(store.collections()))
    stores.forget(args.model)
    result(args, {"model": args.model, "removed": removed},
           f"dropped the store of {args.model}: {removed} photos removed")
    return 0


def register(sub) -> None:
    models = add_group(sub, "models", help="the gallery's stores, one per embedding model")
    m = add_command(models, "list", cmd_models_list,
                    help="each model's store, its photos, and which one serves queries")
    m = add_command(models, "reembed", cmd_models_reembed,
                    help="embed the serving store's photos with another model, from their "
                                          "stored originals; queries switch to it once it holds every photo")
    m.add_argument("--backbone", help=f"the new encoder (default {DEFAULT_BACKBONE}); see `geoloc encoders`")
    m.add_argument("--checkpoint", help="its local weights (file or directory)")
    m.add_argument("--bundle", help="a model bundle (classifier + RRM) to embed with")
    add_list_option(m, "--collections", metavar="NAME", help="only these collections (default: all)")
    m = add_command(models, "switch", cmd_models_switch, help="make a model's store serve queries")
    m.add_argument("model")
    m = add_command(models, "drop", cmd_models_drop, help="delete a model's store (not the one serving)")
    m.add_argument("model")
