"""Building and measuring models: split a manifest, cache features, train a bundle, k-fold evaluation."""

from __future__ import annotations

import sys
from pathlib import Path

from tqdm import tqdm

from geoloc.aggregation import AGGREGATORS
from geoloc.cli.common import (add_command, add_list_option, add_model_options, head_name, print_counts, print_json,
                               settings_from)


def cmd_split(args) -> int:
    from geoloc.splits import split_manifest

    gallery_csv, queries_csv, counts = split_manifest(Path(args.manifest), Path(args.out), args.by,
                                                      args.query_fraction, args.seed)
    if args.json:
        print_json({"gallery": str(gallery_csv), "queries": str(queries_csv), "by": args.by, "photos": counts})
        return 0
    print(f"{counts['gallery']} gallery photos -> {gallery_csv}")
    print(f"{counts['queries']} query photos -> {queries_csv}  (no '{args.by}' on both sides)")
    return 0


def cmd_features(args) -> int:
    from geoloc.features import extract_features
    from geoloc.ingest.sources import count_items
    from geoloc.models.encoders import build_encoder

    settings = settings_from(args)
    total = count_items(Path(args.source))
    out = args.out if args.out.endswith(".npz") else args.out + ".npz"
    backbone = build_encoder(settings.backbone, settings.checkpoint, device=settings.device,
                             batch_size=settings.batch_size, trace=settings.trace_model)
    with tqdm(total=total, unit="photo", desc="features") as bar:
        features, skipped = extract_features(args.source, out, backbone, progress=bar.update)
    if args.json:
        print_json({"out": out, "photos": len(features), "dim": int(features.features.shape[1]),
                    "model": features.model_id, "skipped": dict(skipped)})
        return 0
    print(f"{len(features)} photos x {features.features.shape[1]} features ({features.model_id}) -> {out}")
    print_counts(skipped)
    return 0


def cmd_train(args) -> int:
    from geoloc.features import load_features
    from geoloc.training import train_bundle

    features = load_features(args.features)
    kinds = tuple(args.heads)
    print(f"training on {len(features)} photos ({features.model_id}): heads {', '.join(kinds)} and the RRM",
          file=sys.stderr)
    bundle = train_bundle(features, args.out, kinds=kinds, seed=args.seed, device=settings_from(args).device)
    if args.json:
        print_json({"bundle": bundle.bundle_id, "out": args.out, "model": features.model_id,
                    "photos": len(features), "fine_cells": len(bundle.hierarchy.fine),
                    "metrics": bundle.manifest["metrics"]})
        return 0
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
    if args.json:
        print_json({**report, "written": {kind: str(path) for kind, path in paths.items()}})
        return 0
    print(markdown(report))
    print("written: " + ", ".join(str(p) for p in paths.values()))
    return 0


def cmd_calibrate(args) -> int:
    from geoloc.calibrate import fit_calibrator
    from geoloc.features import load_features
    from geoloc.models.bundle import load_bundle

    features = load_features(args.features)
    bundle = load_bundle(args.bundle) if args.bundle else None
    calibrator, path = fit_calibrator(features, bundle, folds=args.folds, seed=args.seed, out=args.out,
                                      home=settings_from(args).home, k=args.k, aggregator=args.aggregator,
                                      top_cells=args.top_cells, head=args.head, data=args.data or str(args.features),
                                      default=args.as_default,
                                      progress=lambda line: print(line, file=sys.stderr))
    if args.json:
        print_json({"calibrator": calibrator.id, "path": str(path), **calibrator.info})
        return 0
    print(f"calibrator {calibrator.id} -> {path}")
    checked = calibrator.info.get("cross_validation", {})
    if checked:
        errors = ", ".join(f"{radius} {value:.3f}" for radius, value in checked["calibration_error"].items())
        top, everyone = checked["selective"]["25km"]["10%"], checked["selective"]["25km"]["100%"]
        print(f"  cross-validated by photographer: calibration error {errors}; within 25 km: the most "
              f"confident 10% {top:.1f}%, all answers {everyone:.1f}%")
    return 0


def register(sub) -> None:
    p = add_command(sub, "split", cmd_split, help="split a CSV manifest into gallery and query manifests by a column")
    p.add_argument("manifest")
    p.add_argument("--out", required=True, help="folder for gallery.csv and queries.csv")
    p.add_argument("--by", default="photographer", help="column whose values never straddle the split")
    p.add_argument("--query-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)

    p = add_command(sub, "features", cmd_features, help="cache backbone features of a labelled source (resumable)")
    p.add_argument("source", help="folder or CSV manifest (a 'photographer' column is kept for splits)")
    p.add_argument("--out", required=True, help="output .npz file")
    add_model_options(p)

    p = add_command(sub, "train", cmd_train,
                    help="train the cell classifiers and the RRM on a feature cache -> a bundle")
    p.add_argument("features", help="a .npz from `geoloc features` (with a photographer column)")
    p.add_argument("--out", required=True, help="bundle directory to create")
    add_list_option(p, "--heads", default=["ce", "hc", "mvmf"], metavar="HEAD",
                    help="heads to train (default ce,hc,mvmf; SwC uses mvmf)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="auto, cpu, cuda ... (default auto)")

    p = add_command(sub, "calibrate", cmd_calibrate,
                    help="fit the probabilities answers carry, on labelled photos, photographer-disjoint; saved "
                         "beside the gallery or in the bundle",
                    description="Locates each fold of the labelled photos against a gallery of the others (no "
                                "photographer on both sides) and fits how often answers like these lie within 1, "
                                "25, 200, 750 and 2,500 km. With a bundle, calibrate on photos its classifier was "
                                "not trained on, or it will look surer than it is.")
    p.add_argument("features", help="a .npz from `geoloc features` (with a photographer column)")
    p.add_argument("--bundle", help="calibrate Search-within-Cell with this bundle (default: retrieval)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-k", type=int, default=10, help="neighbours, as locate will use them (default 10)")
    p.add_argument("--aggregator", default="cluster", choices=AGGREGATORS.names())
    p.add_argument("--top-cells", type=int, default=1)
    p.add_argument("--head", type=head_name, help="with a bundle: its classifier (default: its own)")
    p.add_argument("--out", help="where to save it (default: in the bundle, or $GEOLOC_HOME/calibration/)")
    p.add_argument("--data", help="what these photos are, in words, recorded with the calibrator")
    p.add_argument("--as-default", action="store_true",
                   help="mark it as geoloc's shipped default (how geoloc/default_calibration.json is made)")

    p = add_command(sub, "eval", cmd_eval, help="photographer-disjoint k-fold evaluation of every method")
    p.add_argument("features", help="a .npz from `geoloc features` (with a photographer column)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="eval", help="folder for eval.md, eval.json and eval.png")
