"""`geoloc maintenance`: keeping the data home tidy. `sweep` removes stored originals nothing needs; `index`
builds the gallery's vector index."""

from __future__ import annotations

from geoloc.cli.common import add_command, add_group, print_json, result, settings_from


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def cmd_sweep(args) -> int:
    from geoloc.retention import sweep_with
    from geoloc.runtime import Runtime

    settings = settings_from(args)
    if args.max_age is not None:
        settings.spool_max_age = args.max_age
    if args.max_bytes is not None:
        settings.spool_max_bytes = args.max_bytes
    with Runtime(settings) as runtime:
        swept = sweep_with(settings, runtime.every_store, runtime.job_store())
    if args.json:
        print_json({"spool": str(settings.spool_dir), "removed": swept.removed, "freed_bytes": swept.freed,
                    "kept": swept.kept, "kept_bytes": swept.kept_bytes})
        return 0
    print(f"removed {swept.removed} files ({_mib(swept.freed)}) from {settings.spool_dir}; "
          f"kept {swept.kept} ({_mib(swept.kept_bytes)})")
    return 0


def cmd_index(args) -> int:
    from geoloc.maintenance_index import build_indexes
    from geoloc.runtime import Runtime

    settings = settings_from(args)
    with Runtime(settings) as runtime:
        built = build_indexes(runtime.every_store())
    seconds = sum(store["seconds"] for store in built["stores"])
    breadths = [f"{s['search']['hnsw_ef']} candidates per search find {s['search']['recall_at_10']:.3f} of the exact "
                f"top 10" + ("" if s["search"]["target_met"] else " (short of 0.99: see README 'The gallery at scale')")
                for s in built["stores"] if "search" in s]
    if breadths and settings.hnsw_ef:
        breadths.append(f"searches keep GEOLOC_HNSW_EF={settings.hnsw_ef} candidates, as set")
    result(args, built, "; ".join([f"indexed {built['points']} photos in {len(built['stores'])} store(s) in "
                                   f"{seconds:.1f} s", *breadths]))
    return 0


def register(sub) -> None:
    tasks = add_group(sub, "maintenance", help="keep the data home tidy (geoloc maintenance sweep, index)")
    s = add_command(tasks, "sweep", cmd_sweep,
                    help="remove stored photo originals that no photo and no unfinished job needs",
                    description="Removes the copies in the spool that no photo of any model's store and no "
                                "unfinished job needs, once older than GEOLOC_SPOOL_MAX_AGE seconds, or sooner, "
                                "oldest first, while together they weigh more than GEOLOC_SPOOL_MAX_BYTES. The "
                                "API also sweeps when it starts. Needs the gallery: with an embedded one, run it "
                                "while no server holds it, or beside the serving API (GEOLOC_GALLERY_VIA_API=1).")
    s.add_argument("--max-age", type=int, help="seconds (default GEOLOC_SPOOL_MAX_AGE, 3600)")
    s.add_argument("--max-bytes", type=int, help="bytes (default GEOLOC_SPOOL_MAX_BYTES, 1 GiB)")
    add_command(tasks, "index", cmd_index, help="build the gallery's vector index (HNSW) of every model's store",
                description="Builds the HNSW index of every model's store, as the embedded gallery does on its own "
                            "after GEOLOC_INDEX_AFTER_UPSERTS upserted photos: on a copy, by another process, so "
                            "that searches go on meanwhile (a Qdrant server indexes by itself: nothing to do). "
                            "With an embedded gallery held by a serving API (GEOLOC_GALLERY_VIA_API=1), that API "
                            "builds it; POST /v1/maintenance/index does the same as a job.")
