"""Great-circle geometry on a spherical Earth (the metric of the paper, section 4.3)."""

from __future__ import annotations

import numpy as np

EARTH_RADIUS_KM = 6371.0088


def to_unit_vectors(lat, lon) -> np.ndarray:
    """Degrees -> unit vectors on the sphere, shape (..., 3)."""
    lat_r = np.radians(np.asarray(lat, dtype=np.float64))
    lon_r = np.radians(np.asarray(lon, dtype=np.float64))
    cos_lat = np.cos(lat_r)
    return np.stack([cos_lat * np.cos(lon_r), cos_lat * np.sin(lon_r), np.sin(lat_r)], axis=-1)


def from_unit_vectors(xyz) -> tuple[np.ndarray, np.ndarray]:
    """Unit (or unnormalised) vectors -> (lat, lon) in degrees."""
    xyz = np.asarray(xyz, dtype=np.float64)
    lat = np.degrees(np.arctan2(xyz[..., 2], np.hypot(xyz[..., 0], xyz[..., 1])))
    lon = np.degrees(np.arctan2(xyz[..., 1], xyz[..., 0]))
    return lat, lon


def haversine_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Great-circle distance in km, broadcasting over its arguments."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp = p2 - p1
    dl = np.radians(np.asarray(lon2) - np.asarray(lon1))
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def spherical_mean(lat, lon, weights=None) -> tuple[float, float]:
    """Mean of unit vectors, renormalised: correct across the antimeridian and at the poles."""
    xyz = to_unit_vectors(lat, lon).reshape(-1, 3)
    w = np.ones(len(xyz)) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    mean = (xyz * w[:, None]).sum(axis=0)
    if np.linalg.norm(mean) < 1e-12:  # antipodal points: no meaningful mean, keep the heaviest
        mean = xyz[int(np.argmax(w))]
    la, lo = from_unit_vectors(mean)
    return float(la), float(lo)
