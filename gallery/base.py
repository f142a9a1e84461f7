"""The Gallery interface every backend implements, and the payload schema they share.

One Qdrant collection holds every reference collection of the platform; a photo's reference collection,
S2 leaf cell, location, source and embedding model are payload, indexed before the first upsert.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from geoloc.cells import leaf_int64

QDRANT_COLLECTION = "geoloc"
VECTOR_NAME = "image"
# a filter (an S2 cell) or a whole store matching fewer kilobytes of float32 vectors than this (20,000 photos of
# 1280-d) is searched by scoring every matching vector, not through the graph: exact with float32; with int8 the
# int8 copies pick candidates the originals rescore, 0.999 of the exact top 10 in a 10,000-photo cell of a million
# (README "The gallery at scale"). Qdrant's default, 10,000, sent such cells to the graph (0.93). New stores.
FULL_SCAN_KB = 100_000
# candidates an HNSW search keeps where neither GEOLOC_HNSW_EF nor a measurement (gallery.search_breadth) says:
# 0.99 of the exact top 10 up to 100,000 photos, under 10 ms (README "The gallery at scale")
DEFAULT_HNSW_EF = 512

# payload field -> index kind; created before any upsert (filtered search is 400x slower without them)
PAYLOAD_INDEXES = {
    "collection": "keyword",
    "s2": "integer",
    "location": "geo",
    "model": "keyword",
    "sha256": "keyword",
}


class GalleryError(RuntimeError):
    """A gallery operation that a user can act on (wrong model, unreachable server, bad dimension)."""


class NoGallery(GalleryError):
    """Opening, without a dimension, a gallery that does not exist yet."""


def make_payload(collection: str, lat: float, lon: float, source: str, model_id: str, sha256: str,
                 extra: dict | None = None, bundle_id: str | None = None) -> dict:
    """`model` names what made the vector (the gallery refuses others); `bundle` the model bundle, if any."""
    return {
        "collection": collection,
        "s2": leaf_int64(lat, lon),
        "location": {"lat": float(lat), "lon": float(lon)},
        "source": source,
        "model": model_id,
        "bundle": bundle_id,
        "sha256": sha256,
        "extra": dict(extra or {}),
    }


@dataclass
class GalleryPoint:
    id: str
    vector: np.ndarray
    payload: dict


def float_bounds(lo: int, hi: int) -> tuple[float, float]:
    """An inclusive range of shifted S2 leaf ids as the float bounds Qdrant's range filter takes.

    Qdrant ranges are f64 (53-bit mantissa) while leaf ids use 64 bits, so a cell's own bounds are not
    f64 numbers. Leaf ids are odd, and the even numbers just outside a cell of level <= 25 are multiples
    of 2**11, which f64 holds exactly: widening each bound to them gives exact bounds that no leaf
    equals, so the filter selects exactly the cell once Qdrant compares in int64 (its integer index does).
    """
    gte, lte = lo - (lo & 1), hi + (hi & 1)
    if int(float(gte)) != gte or int(float(lte)) != lte:
        raise ValueError(f"cell range [{lo}, {hi}] is finer than S2 level 25: a float range cannot hold it")
    return float(gte), float(lte)


@dataclass
class SearchFilter:
    """Conditions AND-ed together; cell_ranges are OR-ed inclusive ranges of shifted S2 leaf ids.

    None leaves a condition out; an empty list matches nothing (no collection, no cell).
    """

    collections: Sequence[str] | None = None
    cell_ranges: Sequence[tuple[int, int]] | None = None
    radius: tuple[float, float, float] | None = None  # lat, lon, km
    box: tuple[float, float, float, float] | None = None  # south, west, north, east; west > east crosses 180°


def box_ranges(box: tuple[float, float, float, float]) -> tuple[tuple[float, float], list[tuple[float, float]]]:
    """A box as an inclusive latitude range and the longitude ranges any of which a point must fall in.

    Backends filter a box by plain ranges on the location's lat and lon rather than Qdrant's geo bounding
    box, which drops points when a side lies on a pole or the box spans every longitude (measured on Edge).
    """
    south, west, north, east = box
    lon_ranges = [(west, east)] if west <= east else [(west, 180.0), (-180.0, east)]
    return (south, north), lon_ranges


@dataclass
class Hit:
    id: str
    score: float
    payload: dict
    vector: np.ndarray | None = field(default=None, repr=False)

    @property
    def lat(self) -> float:
        return float(self.payload["location"]["lat"])

    @property
    def lon(self) -> float:
        return float(self.payload["location"]["lon"])


class NoIndexBuilds:
    """The index upkeep of a gallery that builds none itself (a Qdrant server indexes on its own); the embedded
    gallery's is gallery.edge_index.IndexBuilder, with the same three members."""

    pending = False  # a build under way, or due after this process's writes: one a closing process would lose

    def settle(self) -> None:
        """For a process about to close after writing: let the build under way end, then build if one is due."""

    def stop(self) -> None:
        """End a build under way (its copy dropped), so a closing process need not wait minutes for it."""


class Gallery(ABC):
    """Located photo embeddings. Implementations: gallery.edge (embedded) and gallery.server."""

    dim: int  # embedding dimension, fixed when the gallery is created
    index = NoIndexBuilds()  # the vector index's upkeep: `pending`, `settle()`, `stop()`

    @abstractmethod
    def upsert(self, points: Sequence[GalleryPoint]) -> None:
        """Insert or overwrite points by id (idempotent), searchable on return."""

    @abstractmethod
    def search(self, vector: np.ndarray, k: int, where: SearchFilter | None = None) -> list[Hit]:
        """Top-k by cosine similarity among the points matching `where`.

        Exact whenever `where` is given (SwC's in-cell search); unfiltered searches may use HNSW once built.
        """

    @abstractmethod
    def count(self, where: SearchFilter | None = None) -> int: ...

    @abstractmethod
    def collections(self) -> dict[str, int]:
        """Reference collection name -> photo count."""

    @abstractmethod
    def delete(self, where: SearchFilter | None = None, ids: Sequence[str] | None = None) -> int:
        """Delete the points matching `where` and having one of these ids (either may be left out,
        not both: SearchFilter() matches every point); returns how many went."""

    @abstractmethod
    def scroll(self, where: SearchFilter | None = None, with_vectors: bool = False,
               batch: int = 512) -> Iterator[Hit]:
        """Every matching point once (score 0)."""

    @abstractmethod
    def retrieve(self, ids: Sequence[str]) -> list[Hit]: ...

    @abstractmethod
    def close(self) -> None: ...

    def optimize(self) -> dict:
        """Maintenance: build the vector index where the backend does not do it in the background; what the build
        measured of its searches (gallery.search_breadth.Breadth, as a dict), empty where nothing was built."""
        return {}

    def delete_collection(self, name: str) -> int:
        return self.delete(SearchFilter(collections=[name]))

    def embedding_model(self) -> str | None:
        """The model id of the stored embeddings (None while empty)."""
        first = next(iter(self.scroll(batch=1)), None)
        return None if first is None else first.payload.get("model")

    def check_model(self, model_id: str) -> None:
        """Refuse to mix embeddings of two models: their similarities mean nothing to each other."""
        stored = self.embedding_model()
        if stored is not None and stored != model_id:
            raise GalleryError(
                f"this gallery holds embeddings of model '{stored}', not '{model_id}': "
                f"search it with that model, or re-embed the gallery for the new one")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
