"""Synthetic feature sets whose direction encodes the place: photos of six cities by a few photographers
each, for the evaluation and calibration tests (learned methods must see the place)."""

from __future__ import annotations

import numpy as np

from geoloc.features import FeatureSet

CITIES = [(48.86, 2.35), (40.71, -74.0), (35.68, 139.69), (-33.87, 151.21), (-22.91, -43.17), (30.04, 31.24)]


def place_coded_features(per_city: int, dim: int, noise: float, jitter_deg: float, model_id: str,
                         owners_per_city: int = 6, seed: int = 0) -> FeatureSet:
    """Each photo: its city's random prototype plus `noise`, taken within `jitter_deg` of the city."""
    rng = np.random.default_rng(seed)
    prototypes = rng.normal(size=(len(CITIES), dim))
    rows = [(prototypes[c] + noise * rng.normal(size=dim), lat + rng.normal(0, jitter_deg),
             lon + rng.normal(0, jitter_deg), f"owner-{c}-{i % owners_per_city}")
            for c, (lat, lon) in enumerate(CITIES) for i in range(per_city)]
    feats, lat, lon, owners = zip(*rows)
    n = len(rows)
    return FeatureSet(np.array(feats, dtype=np.float32), np.array(lat), np.array(lon),
                      np.array([f"p{i}.jpg" for i in range(n)]), np.array([f"{i:064x}" for i in range(n)]),
                      np.array(owners), model_id)
