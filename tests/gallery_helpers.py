"""The gallery contract's fixtures and its brute-force reference: both backends (Qdrant Edge on disk, and
qdrant-client's local mode standing in for a server), sample points, and a payload-reading filter matcher."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import s2sphere

from geoloc.gallery.base import GalleryPoint, SearchFilter, make_payload
from geoloc.gallery.edge import EdgeGallery
from geoloc.gallery.server import ServerGallery
from geoloc.cells import leaf_range
from geoloc.geodesy import haversine_km

DIM = 12
MODEL = "test-model-v1"
PLACES = {"paris": (48.85, 2.35), "tokyo": (35.68, 139.69), "nyc": (40.71, -74.0), "sydney": (-33.87, 151.21)}
COLLECTIONS = ("news", "archive", "ref")


def token_at_level(lat: float, lon: float, level: int) -> str:
    """The token of the S2 cell of this level holding the point."""
    return s2sphere.CellId.from_lat_lng(s2sphere.LatLng.from_degrees(lat, lon)).parent(level).to_token()


def make_points(n: int = 240, seed: int = 0) -> list[GalleryPoint]:
    """Clusters around a few cities (so cells and circles hold some points, not all) plus points anywhere."""
    rng = np.random.default_rng(seed)
    centres = list(PLACES.values())
    points = []
    for i in range(n):
        if i % 6 == 5:
            lat, lon = float(np.degrees(np.arcsin(rng.uniform(-1, 1)))), float(rng.uniform(-180, 180))
        else:
            clat, clon = centres[i % len(centres)]
            lat, lon = clat + rng.normal(0, 1.0), clon + rng.normal(0, 1.0)
        payload = make_payload(COLLECTIONS[rng.integers(len(COLLECTIONS))], lat, lon, f"photo-{i}.jpg", MODEL,
                               f"{i:064x}")
        points.append(GalleryPoint(str(uuid.uuid5(uuid.NAMESPACE_URL, f"photo-{i}")), rng.normal(size=DIM), payload))
    return points


POINTS = make_points()


@pytest.fixture(params=["edge", "server"])
def backend(request):
    return request.param


@pytest.fixture
def opener(backend, tmp_path):
    """Opens the same gallery on disk each call, so a test can close and reopen it; closes what is left."""
    opened = []

    def open_(dim: int | None = DIM):
        if backend == "edge":
            gallery = EdgeGallery(tmp_path / "edge", dim)
        else:
            gallery = ServerGallery(None, dim, path=str(tmp_path / "local"))
        opened.append(gallery)
        return gallery

    yield open_
    for gallery in opened:
        gallery.close()


@pytest.fixture
def gallery(backend, tmp_path):
    """A fresh gallery; the server stand-in in memory, its quickest form."""
    g = EdgeGallery(tmp_path / "edge", DIM) if backend == "edge" else ServerGallery(None, DIM, location=":memory:")
    yield g
    g.close()


@pytest.fixture
def full(gallery):
    gallery.upsert(POINTS)
    return gallery


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def same_payload(got: dict, sent: dict) -> bool:
    """Equal, floats to 1e-12: Edge's JSON parsing may move a float's last bit."""
    if isinstance(sent, dict):
        return isinstance(got, dict) and got.keys() == sent.keys() and all(
            same_payload(got[k], sent[k]) for k in sent)
    if isinstance(sent, float):
        return got == pytest.approx(sent, rel=1e-12)
    return got == sent


def true_top_k(query: np.ndarray, points: list[GalleryPoint], k: int) -> tuple[list[str], np.ndarray]:
    scores = unit(np.stack([p.vector for p in points])) @ unit(query)
    order = np.argsort(-scores)[:k]
    return [points[i].id for i in order], scores[order]


def radius_between_points(lat: float, lon: float, near_km: float) -> float:
    """A radius about `near_km` that falls in the widest gap between point distances: no point sits on
    the boundary, where the engines' earth radius and ours could disagree."""
    d = np.sort([haversine_km(lat, lon, p.payload["location"]["lat"], p.payload["location"]["lon"])
                 for p in POINTS])
    candidates = [i for i in range(len(d) - 1) if near_km / 2 < d[i] < near_km * 2]
    i = max(candidates, key=lambda j: d[j + 1] - d[j])
    return float(d[i] + d[i + 1]) / 2


def matches(where: SearchFilter, payload: dict) -> bool:
    lat, lon = payload["location"]["lat"], payload["location"]["lon"]
    if where.collections is not None and payload["collection"] not in where.collections:
        return False
    if where.cell_ranges is not None and not any(lo <= payload["s2"] <= hi for lo, hi in where.cell_ranges):
        return False
    if where.radius is not None and haversine_km(lat, lon, where.radius[0], where.radius[1]) > where.radius[2]:
        return False
    if where.box is not None:
        south, west, north, east = where.box
        in_lon = west <= lon <= east if west <= east else (lon >= west or lon <= east)
        if not (south <= lat <= north and in_lon):
            return False
    return True


PARIS_CELL = leaf_range(token_at_level(*PLACES["paris"], 5))
TOKYO_CELL = leaf_range(token_at_level(*PLACES["tokyo"], 4))
PARIS_RADIUS = (*PLACES["paris"], radius_between_points(*PLACES["paris"], 100.0))
NYC_BOX = (39.5, -75.5, 41.5, -73.0)
ANTIMERIDIAN_BOX = (-60.0, 150.0, 60.0, -170.0)

FILTERS = {
    "one collection": SearchFilter(collections=["news"]),
    "two collections": SearchFilter(collections=["news", "ref"]),
    "cell": SearchFilter(cell_ranges=[PARIS_CELL]),
    "two cells": SearchFilter(cell_ranges=[PARIS_CELL, TOKYO_CELL]),
    "radius": SearchFilter(radius=PARIS_RADIUS),
    "box": SearchFilter(box=NYC_BOX),
    "box over the antimeridian": SearchFilter(box=ANTIMERIDIAN_BOX),
    "western half, pole to pole": SearchFilter(box=(-90.0, -180.0, 90.0, 0.0)),
    "every longitude, pole to pole, one collection": SearchFilter(collections=["news"],
                                                                  box=(-90.0, -180.0, 90.0, 180.0)),
    "collection and cell": SearchFilter(collections=["archive"], cell_ranges=[PARIS_CELL, TOKYO_CELL]),
    "cell and radius": SearchFilter(cell_ranges=[PARIS_CELL], radius=PARIS_RADIUS),
    "collections, cell and box": SearchFilter(collections=["news", "archive"], cell_ranges=[TOKYO_CELL],
                                              box=(34.0, 138.0, 37.0, 141.0)),
}
