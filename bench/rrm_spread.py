"""Similarity spread and retrieval of the RRM against the backbone features it refines, k-fold by photographer.

    .venv/bin/python bench/rrm_spread.py FEATURES.npz [--folds 5] [--seed 0] [--out bench/results/rrm_spread.json]

FEATURES.npz comes from `geoloc features MANIFEST --out FEATURES.npz` (with a photographer column). Each fold
trains the RRM as `geoloc train` does (same partition sizing, same seed) on the other folds; the fold's photos
then query the other folds' photos by cosine similarity, once with the L2-normalised backbone features and once
with the RRM embeddings (exact search: the numbers describe the embedding, not an index).

Spread: the median over queries of the nearest neighbour's similarity and of the gap between the 1st and the
10th neighbour's. A collapsed space has every neighbour at nearly the same similarity, which leaves nothing
for ranking, for similarity-weighted aggregation or for int8 storage to resolve.
Retrieval: the nearest neighbour's location; accuracy within 1/25/200/750/2500 km, median error, and the
RRM's difference to the backbone with a 95% bootstrap interval over photographers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from geoloc.evaluation import accuracy, errors_km, photographer_folds  # noqa: E402
from geoloc.features import load_features  # noqa: E402
from geoloc.models.train import train_rrm  # noqa: E402
from geoloc.training import build_hierarchy  # noqa: E402

THRESHOLDS_KM = (1, 25, 200, 750, 2500)
NEIGHBOURS = 10
BOOTSTRAP = 2000


def neighbours(queries: np.ndarray, gallery: np.ndarray, k: int = NEIGHBOURS) -> tuple[np.ndarray, np.ndarray]:
    """Similarities and gallery rows of each query's k most similar gallery photos, most similar first."""
    sims = queries @ gallery.T
    rows = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, rows, axis=1), rows


def fold_results(train, test, seed: int) -> tuple[dict, dict]:
    """Per-query top similarities and errors of both embeddings on one fold; the RRM's training metrics."""
    hierarchy = build_hierarchy(train.lat, train.lon)
    rrm, metrics = train_rrm(train.features, train.lat, train.lon, train.photographers, hierarchy.fine, seed=seed)
    rrm = rrm.cpu().eval()

    def backbone(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def rrm_embed(x):
        with torch.no_grad():
            return rrm(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()

    results = {}
    for name, embed in (("backbone", backbone), ("rrm", rrm_embed)):
        sims, rows = neighbours(embed(test.features), embed(train.features))
        nearest = rows[:, 0]
        results[name] = {"sims": sims, "errors": errors_km(train.lat[nearest], train.lon[nearest], test.lat, test.lon)}
    return results, metrics


def spread(sims: np.ndarray) -> dict:
    return {
        "top1_sim_median": float(np.median(sims[:, 0])),
        "gap_1_10_median": float(np.median(sims[:, 0] - sims[:, NEIGHBOURS - 1])),
    }


def bootstrap_difference(rrm_errors, backbone_errors, photographers, seed: int) -> dict:
    """RRM minus backbone accuracy (points) per threshold: the estimate and a 95% interval from resampling
    whole photographers (queries of one photographer are not independent)."""
    owners, owner_of = np.unique(photographers, return_inverse=True)
    rng = np.random.default_rng(seed)
    hits = {t: (rrm_errors <= t).astype(float) - (backbone_errors <= t) for t in THRESHOLDS_KM}
    sums = {t: np.bincount(owner_of, hits[t], len(owners)) for t in THRESHOLDS_KM}
    counts = np.bincount(owner_of, minlength=len(owners))
    draws = rng.integers(0, len(owners), (BOOTSTRAP, len(owners)))
    result = {}
    for t in THRESHOLDS_KM:
        resampled = 100 * sums[t][draws].sum(axis=1) / counts[draws].sum(axis=1)
        low, high = np.percentile(resampled, [2.5, 97.5])
        result[f"{t:g}km"] = {"diff": float(100 * hits[t].mean()), "ci95": [float(low), float(high)]}
    return result


def run(path: Path, folds: int, seed: int) -> dict:
    features = load_features(path)
    fold_of = photographer_folds(features.photographers, folds, seed)
    pooled = {"backbone": {"sims": [], "errors": []}, "rrm": {"sims": [], "errors": []}}
    per_fold, training, order = [], [], []
    started = time.perf_counter()
    for fold in range(folds):
        train, test = features.subset(fold_of != fold), features.subset(fold_of == fold)
        results, metrics = fold_results(train, test, seed)
        training.append(metrics)
        order.append(np.flatnonzero(fold_of == fold))
        per_fold.append({name: spread(r["sims"]) for name, r in results.items()})
        for name, r in results.items():
            pooled[name]["sims"].append(r["sims"])
            pooled[name]["errors"].append(r["errors"])
        gaps = ", ".join(f"{name} gap {s['gap_1_10_median']:.4f}" for name, s in per_fold[-1].items())
        print(f"fold {fold + 1}/{folds}: {gaps}")
    merged = {n: {k: np.concatenate(v) for k, v in r.items()} for n, r in pooled.items()}
    photographers = features.photographers[np.concatenate(order)]
    return {
        "features": str(path),
        "model": features.model_id,
        "photos": len(features),
        "folds": folds,
        "seed": seed,
        "methods": {n: {**spread(r["sims"]), **accuracy(r["errors"], THRESHOLDS_KM)} for n, r in merged.items()},
        "rrm_minus_backbone": bootstrap_difference(
            merged["rrm"]["errors"], merged["backbone"]["errors"], photographers, seed
        ),
        "per_fold": per_fold,
        "training": training,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }


def report(result: dict) -> str:
    columns = [f"{t:g}km" for t in THRESHOLDS_KM]
    header = " | ".join(c.replace("km", " km") for c in columns)
    lines = [
        f"{result['photos']} photos, {result['folds']}-fold by photographer (seed {result['seed']}), exact search",
        f"| embedding | top-1 sim | gap 1st-10th | {header} | median km |",
        "|---|---|---|" + "---|" * (len(columns) + 1),
    ]
    for name, row in result["methods"].items():
        lines.append(
            f"| {name} | {row['top1_sim_median']:.4f} | {row['gap_1_10_median']:.4f} | "
            + " | ".join(f"{row[c]:.1f}" for c in columns)
            + f" | {row['median_km']:,.0f} |"
        )
    diff = result["rrm_minus_backbone"]
    lines.append(
        "RRM - backbone, points [95% CI over photographers]: "
        + ", ".join(f"{c} {d['diff']:+.1f} [{d['ci95'][0]:+.1f}, {d['ci95'][1]:+.1f}]" for c, d in diff.items())
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("features", type=Path)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "rrm_spread.json")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    result = run(args.features, args.folds, args.seed)
    print(report(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
