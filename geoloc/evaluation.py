"""Accuracy at the granularities of the paper (section 4.3) on great-circle distance, and how good an
answer's stated probabilities are: calibration error and accuracy among the most confident answers."""

from __future__ import annotations

import numpy as np

from geoloc.geodesy import haversine_km

THRESHOLDS_KM = (0.1, 1, 5, 10, 25, 200, 750, 2500)
SELECTIVE_FRACTIONS = (0.05, 0.1, 0.2, 0.5, 1.0)
CALIBRATION_BINS = 10


def errors_km(pred_lat, pred_lon, true_lat, true_lon) -> np.ndarray:
    return haversine_km(np.asarray(pred_lat), np.asarray(pred_lon), np.asarray(true_lat), np.asarray(true_lon))


def accuracy(errors, thresholds=THRESHOLDS_KM) -> dict[str, float]:
    """Percentage of answers within each threshold, plus the median error in km."""
    errors = np.asarray(errors, dtype=np.float64)
    result = {f"{t:g}km": float(100.0 * np.mean(errors <= t)) for t in thresholds}
    result["median_km"] = float(np.median(errors))
    result["n"] = int(errors.size)
    return result


def photographer_folds(photographers, k: int, seed: int = 0) -> np.ndarray:
    """Fold index per row, whole photographers at a time, folds balanced by photo count.

    Near-duplicate shots of one photographer on both sides of a split would inflate every figure.
    """
    photographers = np.asarray(photographers)
    owners, counts = np.unique(photographers, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(owners))
    order = order[np.argsort(-counts[order], kind="stable")]  # largest first, ties shuffled
    fold_sizes = np.zeros(k, dtype=np.int64)
    fold_of_owner = {}
    for i in order:
        fold = int(np.argmin(fold_sizes))
        fold_of_owner[owners[i]] = fold
        fold_sizes[fold] += counts[i]
    return np.array([fold_of_owner[p] for p in photographers], dtype=np.int64)


def selective_accuracy(confidence, hits, fractions=SELECTIVE_FRACTIONS) -> dict[str, float]:
    """Percentage of hits among the most confident fraction of answers, for each fraction ("10%": ...)."""
    order = np.argsort(-np.asarray(confidence, dtype=np.float64), kind="stable")
    ranked = np.asarray(hits, dtype=bool)[order]
    return {f"{100 * q:g}%": float(100.0 * ranked[: max(1, int(np.ceil(q * ranked.size)))].mean())
            for q in fractions}


def expected_calibration_error(probs, hits, bins: int = CALIBRATION_BINS, equal_mass: bool = False) -> float:
    """Mean |stated probability - observed frequency| over bins of answers, weighted by bin size.

    Equal-width bins by default (the usual definition); equal-mass bins (deciles of the probability)
    look harder at rare events, where nearly every answer falls into the first equal-width bin."""
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(hits, dtype=np.float64)
    groups = _bins(p, bins, equal_mass)
    return float(sum(g.size * abs(p[g].mean() - y[g].mean()) for g in groups) / max(p.size, 1))


def reliability_curve(probs, hits, bins: int = CALIBRATION_BINS) -> dict[str, list[float]]:
    """Mean stated probability and observed frequency in equal-mass bins, for a reliability diagram."""
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(hits, dtype=np.float64)
    groups = _bins(p, bins, equal_mass=True)
    return {"probability": [float(p[g].mean()) for g in groups], "frequency": [float(y[g].mean()) for g in groups]}


def _bins(p: np.ndarray, bins: int, equal_mass: bool) -> list[np.ndarray]:
    """Indices of the answers in each non-empty bin of probability."""
    if equal_mass:
        groups = np.array_split(np.argsort(p, kind="stable"), bins)
    else:
        index = np.minimum((p * bins).astype(np.int64), bins - 1)
        groups = [np.flatnonzero(index == b) for b in range(bins)]
    return [g for g in groups if g.size]


def calibration_metrics(probs, hits, radii) -> dict[str, dict[str, float]]:
    """For (n, radii) probabilities and outcomes: base rate, mean probability, calibration errors, Brier
    score, selective accuracy and reliability curve per radius, keyed "25km"."""
    probs, hits = np.asarray(probs, dtype=np.float64), np.asarray(hits, dtype=bool)
    metrics: dict[str, dict] = {name: {} for name in ("base_rate", "mean_probability", "calibration_error",
                                                      "calibration_error_equal_mass", "brier", "selective",
                                                      "reliability")}
    for j, radius in enumerate(radii):
        key, p, y = f"{radius:g}km", probs[:, j], hits[:, j]
        metrics["base_rate"][key] = float(y.mean())
        metrics["mean_probability"][key] = float(p.mean())
        metrics["calibration_error"][key] = expected_calibration_error(p, y)
        metrics["calibration_error_equal_mass"][key] = expected_calibration_error(p, y, equal_mass=True)
        metrics["brier"][key] = float(np.mean((p - y) ** 2))
        metrics["selective"][key] = selective_accuracy(p, y)
        metrics["reliability"][key] = reliability_curve(p, y)
    return metrics
