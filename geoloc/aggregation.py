"""From the K most similar located photos to one answer (paper 3.4; kNN density from Revisiting IM2GPS).

Every aggregator takes the neighbours' coordinates and similarities, most similar first, and returns the
answer and the indices of the neighbours that support it. One that also takes `pool` is handed the wider
set of nearest photos (Pool) with who took each.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geoloc.geodesy import EARTH_RADIUS_KM, haversine_km, spherical_mean
from geoloc.registry import Registry

AGGREGATORS: Registry = Registry("aggregator")
# A place many people photographed alike (a landmark) is recognised more surely than one photographer's series
# of a street: an answer's place is weighed by the photographers among this many nearest photos within 25 km.
POOL_SIZE, WITNESS_KM = 50, 25.0


@dataclass(frozen=True)
class Pool:
    """The POOL_SIZE nearest photos: coordinates and who took each."""

    lat: np.ndarray
    lon: np.ndarray
    photographers: np.ndarray  # any hashable labels

    def witnesses(self, lat, lon, radius_km: float = WITNESS_KM) -> np.ndarray:
        """For each place, how many different photographers took the pool's photos within `radius_km` of it."""
        near = haversine_km(np.atleast_1d(lat)[:, None], np.atleast_1d(lon)[:, None], self.lat[None, :],
                            self.lon[None, :]) <= radius_km
        labels, who = np.unique(self.photographers, return_inverse=True)
        took = who[:, None] == np.arange(labels.size)[None, :]  # (pool, photographers)
        return ((near.astype(np.int64) @ took) > 0).sum(axis=1)


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
    clustered = labels >= 0
    if not clustered.any():  # only noise (possible when min_samples > 1): fall back to the top photo
        best = np.array([int(np.argmax(scores))])
    else:
        sizes = np.bincount(labels[clustered])
        top_scores = np.full(sizes.size, -np.inf)
        np.maximum.at(top_scores, labels[clustered], scores[clustered])
        chosen = np.lexsort((top_scores, sizes))[-1]  # the largest; among those, the most similar photo's
        best = np.flatnonzero(labels == chosen)
    mean_lat, mean_lon = spherical_mean(lat[best], lon[best])
    return Estimate(mean_lat, mean_lon, best.tolist())


def _dbscan_labels(lat_rad: np.ndarray, lon_rad: np.ndarray, eps_rad: float, min_samples: int) -> np.ndarray:
    """DBSCAN cluster labels (-1: noise) over haversine distances in radians.

    With min_samples 1 every point is a core point, so DBSCAN's clusters are exactly the connected components
    of the graph linking points within eps, found here by squaring the reachability matrix of the K (about
    ten) neighbours: microseconds, where scikit-learn's DBSCAN spends milliseconds building a ball tree and
    scipy's connected_components 0.2 ms validating and converting so small a matrix.
    """
    if min_samples > 1:
        from sklearn.cluster import DBSCAN  # imported here: it costs commands that never cluster ~2 s

        coords = np.stack([lat_rad, lon_rad], axis=1)
        return DBSCAN(eps=eps_rad, min_samples=min_samples, metric="haversine",
                      algorithm="ball_tree").fit_predict(coords)
    # the haversine formula scikit-learn's metric uses, so the eps boundary falls where it does there
    half = np.sin((lat_rad[:, None] - lat_rad[None, :]) / 2) ** 2 + (
        np.cos(lat_rad[:, None]) * np.cos(lat_rad[None, :]) * np.sin((lon_rad[:, None] - lon_rad[None, :]) / 2) ** 2)
    reach = (2 * np.arcsin(np.sqrt(np.clip(half, 0.0, 1.0))) <= eps_rad).astype(np.int32)
    while True:  # paths twice as long each round: log2(K) rounds
        wider = np.minimum(reach @ reach, 1)
        if np.array_equal(wider, reach):
            return reach.argmax(axis=1)  # each point labelled by the first point of its component
        reach = wider


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


@AGGREGATORS.register("witnesses")
def witnesses(lat, lon, scores, pool: Pool | None = None, radius_km: float = WITNESS_KM) -> Estimate:
    """Of the K neighbours' places, the one the most photographers vouch for: the most different people among
    the pool's photos within `radius_km` of it (ties: the most similar neighbour). Without a pool, the K
    neighbours vouch, each as its own photographer."""
    lat, lon, scores = map(np.asarray, (lat, lon, scores))
    pool = pool or Pool(lat, lon, np.arange(lat.size))
    best = int(np.lexsort((scores, pool.witnesses(lat, lon, radius_km)))[-1])
    support = np.flatnonzero(haversine_km(lat, lon, lat[best], lon[best]) <= radius_km)
    return Estimate(float(lat[best]), float(lon[best]), support.tolist())


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

