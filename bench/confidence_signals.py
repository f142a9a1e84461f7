"""Would another signal of an answer make the calibrator rank answers better? Out-of-fold, by photographer.

Each photo is located by the default method (retrieval, K=10, DBSCAN) against a gallery of the other folds,
as `geoloc eval` and `geoloc calibrate` do. Each candidate signal is then added to the calibrator's (which
count the photographers of the 50 nearest photos near the answer):
- the gallery's density around the answer: the share of gallery photos within 25 / 200 / 750 / 2,500 km;
- a hubness-corrected similarity (cross-domain similarity local scaling, Conneau et al. 2018): twice the
  query's similarity to a neighbour minus each photo's mean similarity to its own ten nearest photos; the
  best such score among the ten neighbours, and its margin over the second;
- agreement among more neighbours: the share of the 50 nearest gallery photos within 25 / 200 / 750 /
  2,500 km of the answer (the calibrator's own agreement counts the ten the answer is made from).
For each: its area under the ROC curve for "within 25 km" alone, and the share within 25 km of the 10% of
answers the refitted calibrator is surest of (its probabilities out-of-fold, GroupKFold by photographer).

    .venv/bin/python bench/confidence_signals.py FEATURES.npz   (from `geoloc features MANIFEST.csv`)

Results: bench/results/confidence_signals.json. Nothing here is tuned: the signals are fixed beforehand.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from geoloc.calibration import SIGNALS, cross_val_probabilities, signal_matrix  # noqa: E402
from geoloc.crossval import out_of_fold  # noqa: E402
from geoloc.features import load_features  # noqa: E402
from geoloc.geodesy import haversine_km  # noqa: E402

K = 10
DENSITY_KM = (25, 200, 750, 2500)


def density(features, answers) -> np.ndarray:
    """(n, radii): the share of each answer's gallery (the other folds) within each radius of the answer."""
    fold_of_row = _fold_of_rows(features, answers.rows, answers.folds)
    out = np.zeros((len(answers.rows), len(DENSITY_KM)))
    for i, (lat, lon) in enumerate(answers.answers):
        gallery = fold_of_row != answers.folds[i]
        km = haversine_km(features.lat[gallery], features.lon[gallery], lat, lon)
        out[i] = [np.mean(km <= r) for r in DENSITY_KM]
    return out


def wide_agreement(features, answers, wide: int = 50) -> np.ndarray:
    """(n, radii): the share of each photo's `wide` nearest gallery photos within each radius of its answer."""
    x = features.features / np.linalg.norm(features.features, axis=1, keepdims=True)
    fold_of_row = _fold_of_rows(features, answers.rows, answers.folds)
    position = {row: i for i, row in enumerate(answers.rows)}
    out = np.zeros((len(answers.rows), len(DENSITY_KM)))
    for fold in np.unique(answers.folds):
        gallery, queries = np.flatnonzero(fold_of_row != fold), np.flatnonzero(fold_of_row == fold)
        nearest = gallery[np.argsort(-(x[queries] @ x[gallery].T), axis=1)[:, :wide]]
        for query, rows in zip(queries, nearest):
            lat, lon = answers.answers[position[query]]
            km = haversine_km(features.lat[rows], features.lon[rows], lat, lon)
            out[position[query]] = [np.mean(km <= r) for r in DENSITY_KM]
    return out


def _fold_of_rows(features, rows, folds) -> np.ndarray:
    fold_of_row = np.empty(len(features.lat), dtype=np.int64)
    fold_of_row[rows] = folds
    return fold_of_row


def hubness_corrected(features, rows, folds) -> np.ndarray:
    """(n, 2): the best CSLS score among each photo's K nearest gallery photos, and its margin over the second."""
    x = features.features / np.linalg.norm(features.features, axis=1, keepdims=True)
    fold_of_row = _fold_of_rows(features, rows, folds)
    out = np.zeros((len(x), 2))
    for fold in np.unique(folds):
        gallery, queries = np.flatnonzero(fold_of_row != fold), np.flatnonzero(fold_of_row == fold)
        among = x[gallery] @ x[gallery].T
        np.fill_diagonal(among, -np.inf)
        hub = np.sort(among, axis=1)[:, -K:].mean(axis=1)  # each gallery photo's mean similarity to its own K nearest
        sims = x[queries] @ x[gallery].T
        nearest = np.argsort(-sims, axis=1)[:, :K]
        s = np.take_along_axis(sims, nearest, axis=1)
        csls = np.sort(2 * s - s.mean(axis=1, keepdims=True) - hub[nearest], axis=1)
        out[queries] = np.stack([csls[:, -1], csls[:, -1] - csls[:, -2]], axis=1)
    return out[rows]


def scores(extra: np.ndarray | None, base: np.ndarray, errors: np.ndarray, groups: np.ndarray) -> dict:
    from sklearn.metrics import roc_auc_score

    hit = errors <= 25
    signals = base if extra is None else np.hstack([base, extra])
    p25 = cross_val_probabilities(signals, errors, groups)[:, 1]
    top = np.argsort(-p25, kind="stable")[: len(p25) // 10]
    result = {"top10_within_25km_pct": round(100 * float(hit[top].mean()), 1)}
    if extra is not None:
        result["auc_within_25km"] = [round(float(roc_auc_score(hit, column)), 3) for column in extra.T]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("features")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "bench/results/confidence_signals.json"))
    args = parser.parse_args()
    features = load_features(args.features)
    answers = out_of_fold(features, folds=args.folds, seed=args.seed, progress=lambda _: None)
    base = signal_matrix(answers.signals)
    groups = answers.photographers
    result = {
        "photos": len(answers.rows), "folds": args.folds, "seed": args.seed,
        "within_25km_pct": round(100 * float(np.mean(answers.errors <= 25)), 1),
        "existing_signals_auc": {name: round(float(_auc(base[:, j], answers.errors)), 3)
                                 for j, name in enumerate(SIGNALS) if base[:, j].std() > 0},
        "current": scores(None, base, answers.errors, groups),
        "density": scores(np.log(density(features, answers) + 1e-4), base, answers.errors, groups),
        "hubness_corrected": scores(hubness_corrected(features, answers.rows, answers.folds), base,
                                    answers.errors, groups),
        "agreement_of_50": scores(wide_agreement(features, answers), base, answers.errors, groups),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "existing_signals_auc"}, indent=1))
    print("existing signals' AUC:", result["existing_signals_auc"])


def _auc(values: np.ndarray, errors: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return roc_auc_score(errors <= 25, values)


if __name__ == "__main__":
    main()
