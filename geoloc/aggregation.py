"""From the K most similar located photos to one answer (paper 3.4; kNN density from Revisiting IM2GPS).

Every aggregator takes the neighbours' coordinates and similarities, most similar first, and returns the
answer and the indices of the neighbours that support it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geoloc.geodesy import EARTH_RADIUS_KM, haversine_km, spherical_mean
from geoloc.registry import Registry

AGGREGATORS: Registry = Registry("aggregator")


@dataclass
class Estimate:
    lat: float
    lon: float
    support: list[int]  # indices of the neighbours the answer rests on


@AGGREGATORS.register("cluster")
def cluster(lat, lon, scores, eps_km: float = 1.0, min_samples: int = 1) -> Estimate:
    """DBSCAN on great-circle distance, largest cluster (tie: the one holding the most similar photo),
    answered by its spherical mean."""
    lat, lon, scores = map(np.asarray, (lat, lon, scores))
    labels = _dbscan_labels(np.radians(lat), np.radians(lon), eps_km / EARTH_RADIUS_KM, min_samples)
    best, best_key = None, None
    for label in set(labels.tolist()) - {-1}:
        members = np.flatnonzero(labels == label)
        key = (len(members), scores[members].max())
        if best_key is None or key > best_key:
            best, best_key = members, key
    if best is None:  # only noise (possible when min_samples > 1): fall back to the top photo
        best = np.array([int(np.argmax(scores))])
    mean_lat, mean_lon = spherical_mean(lat[best], lon[best])
    return Estimate(mean_lat, mean_lon, best.tolist())


def _dbscan_labels(lat_rad: np.ndarray, lon_rad: np.ndarray, eps_rad: float, min_samples: int) -> np.ndarray:
    """DBSCAN cluster labels (-1: noise) over haversine distances in radians.

    With min_samples 1 every point is a core point, so DBSCAN's clusters are exactly the connected components
    of the graph linking points within eps: scipy finds them in microseconds for the K (about ten) neighbours
    of an answer, where scikit-learn's DBSCAN spends milliseconds building a ball tree.
    """
    if min_samples > 1:
        from sklearn.cluster import DBSCAN  # imported here: it costs commands that never cluster ~2 s

        coords = np.stack([lat_rad, lon_rad], axis=1)
        return DBSCAN(eps=eps_rad, min_samples=min_samples, metric="haversine",
                      algorithm="ball_tree").fit_predict(coords)
    from scipy.sparse.csgraph import connected_components

    # the haversine formula scikit-learn's metric uses, so the eps boundary falls where it does there
    half = np.sin((lat_rad[:, None] - lat_rad[None, :]) / 2) ** 2 + (
        np.cos(lat_rad[:, None]) * np.cos(lat_rad[None, :]) * np.sin((lon_rad[:, None] - lon_rad[None, :]) / 2) ** 2)
    within = 2 * np.arcsin(np.sqrt(np.clip(half, 0.0, 1.0))) <= eps_rad
    return connected_components(within, directed=False)[1]


@AGGREGATORS.register("nn")
def nearest(lat, lon, scores) -> Estimate:
    """The location of the single most similar photo."""
    i = int(np.argmax(scores))
    return Estimate(float(lat[i]), float(lon[i]), [i])


@AGGREGATORS.register("mean")
def mean(lat, lon, scores) -> Estimate:
    """Spherical mean of all K neighbours (the paper's 'average' ablation)."""
    mean_lat, mean_lon = spherical_mean(lat, lon)
    return Estimate(mean_lat, mean_lon, list(range(len(lat))))


@AGGREGATORS.register("kde")
def kernel_density(lat, lon, scores, sigma_km: float = 100.0, power: float = 10.0) -> Estimate:
    """Weighted Gaussian kernel density over the neighbours (weights s^m), maximised over their locations.

    Candidates are the neighbours' own locations, as the density's modes lie at or near them.
    """
    lat, lon, scores = map(np.asarray, (lat, lon, scores))
    weights = np.clip(scores, 1e-6, None) ** power
    dist = haversine_km(lat[:, None], lon[:, None], lat[None, :], lon[None, :])
    kernel = np.exp(-0.5 * (dist / sigma_km) ** 2)
    density = kernel @ weights
    i = int(np.argmax(density))
    support = np.flatnonzero(dist[i] <= 2 * sigma_km)
    return Estimate(float(lat[i]), float(lon[i]), support.tolist())

