"""Accuracy at the granularities of the paper (section 4.3) on great-circle distance."""

from __future__ import annotations

import numpy as np

from geoloc.geodesy import haversine_km, spherical_mean

THRESHOLDS_KM = (0.1, 1, 5, 10, 25, 200, 750, 2500)


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


def densest_location(lat, lon, radius_km: float = 25.0) -> tuple[float, float]:
    """The trivial answer: the centre of the city-sized spot holding the most gallery photos."""
    lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
    near = haversine_km(lat[:, None], lon[:, None], lat[None, :], lon[None, :]) <= radius_km
    members = near[int(np.argmax(near.sum(axis=1)))]
    return spherical_mean(lat[members], lon[members])
