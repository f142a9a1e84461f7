"""`geoloc locate`: answers for photos, folders of photos and CSV manifests (whose truth scores them), as a
table for people or in a format for machines (geoloc.cli.formats)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NamedTuple

from tqdm import tqdm

from geoloc.aggregation import AGGREGATORS
from geoloc.calibration import RADII_KM
from geoloc.cli.common import UserError, add_command, add_list_option, add_model_options, head_name, \
    read_query_photo, runtime_from
from geoloc.cli.formats import FORMATS, WRITERS
from geoloc.zero_shot import PRIORS


def _expand(names: list[str]) -> list[tuple[str, bool]]:
    """(name, is a manifest) for each query: a folder gives every photo under it, recursively, of the types
    ingest reads (others are not photos: passed over), in name order; a CSV stays a manifest."""
    from geoloc.ingest.images import SUPPORTED_SUFFIXES
    from geoloc.ingest.sources import list_entries

    queries = []
    for name in names:
        if Path(name).is_dir():
            photos = [(str(entry.path), False) for entry in list_entries(Path(name)) if entry.supported]
            if not photos:
                raise UserError(f"{name}: no photos in this folder ({', '.join(sorted(SUPPORTED_SUFFIXES))})")
            queries += photos
        else:
            queries.append((name, name.lower().endswith(".csv")))
    return queries


class QueryItem(NamedTuple):
    name: str
    image: object = None  # the decoded photo; None when it could not be used
    truth: tuple[float, float] | None = None  # (lat, lon) from a manifest
    error: str | None = None
    sha256: str | None = None  # of its bytes: a photo the gallery holds is recognised


def _query_items(queries: list[tuple[str, bool]], policy):
    """A QueryItem for each photo: CSV manifests carry truth, photos don't. A photo is read as ingest reads one
    (a regular file, at most the size `policy` allows)."""
    from geoloc.ingest.files import FileSkip
    from geoloc.ingest.images import ImageError
    from geoloc.ingest.records import PhotoRecord
    from geoloc.ingest.sources import iter_source

    for name, manifest in queries:
        if manifest:
            for record in iter_source(name):
                if isinstance(record, PhotoRecord):
                    yield QueryItem(record.source, record.image, (record.lat, record.lon), sha256=record.sha256)
                else:
                    yield QueryItem(record.source, error=record.reason)
            continue
        try:
            image, digest = read_query_photo(name, policy)
            yield QueryItem(name, image, sha256=digest)
        except (FileSkip, ImageError) as exc:
            yield QueryItem(name, error=str(exc))


def _batches(items, size: int):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def cmd_locate(args) -> int:
    from geoloc.evaluation import accuracy, errors_km
    from geoloc.ingest.files import ReadPolicy
    from geoloc.ingest.sources import count_items
    from geoloc.locate import Locator
    from geoloc.places import load_in_background

    load_in_background()  # beside the model's import and build, which wait on files and torch's threads
    queries = _expand(args.images)
    failures, errors = 0, []
    with runtime_from(args) as runtime:
        locator = Locator(runtime.embedder, runtime.gallery(), k=args.k, aggregator=args.aggregator,
                          collections=args.collections, top_cells=args.top_cells, head=args.head,
                          min_confidence=args.min_confidence, within_km=args.within, prior=args.prior,
                          home=runtime.settings.home)
        locator.check_ready()
        total = sum(count_items(Path(name)) if manifest else 1 for name, manifest in queries)
        batch_size = runtime.settings.batch_size
        bar = tqdm(total=total, unit="photo", desc="locating", disable=total < 2 * batch_size)
        fmt = "json" if args.json else args.format
        writer = WRITERS[fmt]() if fmt in WRITERS else None
        for batch in _batches(_query_items(queries, ReadPolicy.from_settings(runtime.settings)), batch_size):
            bar.update(len(batch))
            for item in batch:
                if item.error:
                    print(f"geoloc: error: {item.name}: cannot use this photo ({item.error})", file=sys.stderr)
                    failures += 1
            usable = [item for item in batch if item.image is not None]
            answers = locator.locate([i.image for i in usable], [i.sha256 for i in usable]) if usable else []
            for item, answer in zip(usable, answers):
                result = {"image": item.name, **answer.to_dict()}
                if item.truth:
                    result["error_km"] = float(errors_km(answer.lat, answer.lon, *item.truth))
                    errors.append(result["error_km"])
                if writer:
                    writer.add(result)
                else:
                    _print_answer(item.name, answer, result.get("error_km"))
        bar.close()
    summary = accuracy(errors) if errors else None
    writer.finish(summary) if writer else _print_summary(summary)
    return 1 if failures else 0


def _print_summary(summary: dict | None) -> None:
    if summary:
        print("accuracy over %d photos with known location: " % summary["n"]
              + ", ".join(f"{k} {v:.1f}%" for k, v in summary.items() if k.endswith("km") and k != "median_km")
              + f"; median error {summary['median_km']:.0f} km")


def confidence_words(answer) -> str:
    """How sure an answer is, in words a reader acts on."""
    if answer.abstained:
        return "not confident"
    radius = answer.uncertainty_km
    if radius is None:
        return "not confident"
    if radius >= 2500:
        return "only the continent is likely"
    return f"likely within {radius:g} km"


def _print_answer(name: str, answer, error_km: float | None = None) -> None:
    truth = "" if error_km is None else f"  [{error_km:.1f} km from the truth]"
    near = f"near {answer.place['label']}" if answer.place else "somewhere"
    guess = " (best guess, not confident)" if answer.abstained else ""
    print(f"{name}: {near}{guess}  {answer.lat:.5f}, {answer.lon:.5f}{truth}")
    if answer.same_photo:
        print(f"  the gallery holds this very photo: [{answer.same_photo['collection']}] "
              f"{answer.same_photo['source']}; its recorded location is the answer")
    chances = ", ".join(f"{radius} km {100 * p:.0f}%" for radius, p in answer.probabilities.items())
    default = " (default calibration: fit your own with geoloc calibrate)" if answer.calibration == "default" else ""
    print(f"  {confidence_words(answer)}; chance within {chances}{default}")
    print(f"  {answer.method}, cluster of {answer.cluster_size}/{len(answer.neighbours)}"
          + (f"; cell {answer.cell['token']} p={answer.cell['probability']:.2f}" if answer.cell else ""))
    for n in answer.neighbours[:5]:
        place = f"  {n.place['label']}" if n.place else ""
        print(f"  {n.similarity:6.3f}  {n.km:8.1f} km  [{n.collection}] {n.source}{place}")


def register(sub) -> None:
    p = add_command(sub, "locate", cmd_locate, json=False, help="estimate where photos were taken")
    p.add_argument("images", nargs="+", metavar="PHOTO|FOLDER|CSV",
                   help="photos, folders of photos (recursive), or CSV manifests (their lat/lon are scored)")
    output = p.add_mutually_exclusive_group()
    output.add_argument("--format", default="table", choices=FORMATS,
                        help="table (default, for people); json: one document; jsonl: one answer per line; csv: "
                             "one row per photo; geojson: a FeatureCollection of the answers for GIS tools")
    output.add_argument("--json", action="store_true", help="the same as --format json")
    p.add_argument("-k", type=int, default=10, help="neighbours to aggregate (default 10)")
    p.add_argument("--aggregator", default="cluster", choices=AGGREGATORS.names())
    add_list_option(p, "--collections", metavar="NAME", help="search only these collections")
    p.add_argument("--top-cells", type=int, default=1, help="with a bundle or --prior: search the N likeliest cells")
    p.add_argument("--prior", choices=PRIORS,
                   help="cell probabilities without a trained classifier: zero-shot, from a CLIP-family encoder's "
                        "text tower and the names of the gallery's places (default: none, or the bundle's classifier)")
    p.add_argument("--head", type=head_name, help="with a bundle: its classifier (default: its own)")
    p.add_argument("--min-confidence", type=float, metavar="P",
                   help="mark answers whose chance of lying within --within km is under P as not confident "
                        "(they still show their best guess)")
    p.add_argument("--within", type=float, default=25, choices=RADII_KM, metavar="KM",
                   help="the radius the confidence speaks of: 1, 25, 200, 750 or 2500 km (default 25)")
    add_model_options(p)
