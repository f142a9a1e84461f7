"""The embedded gallery: one Qdrant Edge shard on local disk (qdrant-edge-py, Qdrant's engine in-process).

Edge has no background optimizer: upserts land in plain segments, searchable at once, and only
`optimize()` builds HNSW (minutes per 100k points: a maintenance job). Filtered searches ask for exact
scoring, which the payload indexes keep fast: they are created with the shard, before any upsert, so
the filter selects the cell's points before any vector is scored.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from qdrant_edge import (
    CountRequest,
    Distance,
    EdgeConfig,
    EdgeShard,
    EdgeVectorParams,
    FacetRequest,
    FieldCondition,
    Filter,
    GeoBoundingBox,
    GeoPoint,
    GeoRadius,
    HasIdCondition,
    IntegerIndexParams,
    MatchAny,
    PayloadSchemaType,
    Point,
    Query,
    QueryRequest,
    RangeFloat,
    ScrollRequest,
    SearchParams,
    UpdateOperation,
)

from geoloc.gallery.base import PAYLOAD_INDEXES, VECTOR_NAME, GalleryError, NoGallery, SearchFilter, float_bounds
from geoloc.gallery.qdrant_base import QdrantGallery

META_FILE = "gallery.json"
SHARD_DIR = "shard"

_INDEX_SCHEMAS = {
    "keyword": PayloadSchemaType.Keyword,
    "geo": PayloadSchemaType.Geo,
    # S2 leaf ids are only ever filtered by range (a cell), never matched one by one
    "integer": IntegerIndexParams(lookup=False, range=True),
}


def edge_filter(where: SearchFilter | None, ids: Sequence[str] | None = None) -> Filter | None:
    """SearchFilter (and ids) -> one Edge Filter whose `must` conditions are AND-ed; None if no condition."""
    must: list = []
    if ids is not None:
        must.append(HasIdCondition(set(ids)))
    if where is not None:
        if where.collections is not None:
            must.append(FieldCondition("collection", match=MatchAny(list(where.collections))))
        if where.cell_ranges is not None:
            ranges = [_in_cell(lo, hi) for lo, hi in where.cell_ranges]
            # an empty `should` matches everything; an empty list of cells must match nothing
            must.append(Filter(should=ranges) if ranges else HasIdCondition(set()))
        if where.radius is not None:
            lat, lon, km = where.radius
            must.append(FieldCondition("location", geo_radius=GeoRadius(GeoPoint(lon=lon, lat=lat), km * 1000.0)))
        if where.box is not None:
            south, west, north, east = where.box
            must.append(FieldCondition("location", geo_bounding_box=GeoBoundingBox(
                GeoPoint(lon=west, lat=north), GeoPoint(lon=east, lat=south))))
    return Filter(must=must) if must else None


def _in_cell(lo: int, hi: int) -> FieldCondition:
    gte, lte = float_bounds(lo, hi)
    return FieldCondition("s2", range=RangeFloat(gte=gte, lte=lte))


class EdgeGallery(QdrantGallery):
    """The gallery at `path`: `path/shard` (the Edge shard) and `path/gallery.json` (its dimension).

    `dim=None` opens an existing gallery whatever its dimension (listing, deleting); creating one needs it.
    Only one process may hold the gallery open at a time: Edge locks its write-ahead log.
    """

    def __init__(self, path: str | Path, dim: int | None = None):
        self.path = Path(path)
        self.dim = self._read_or_write_dim(dim)
        shard_dir = self.path / SHARD_DIR
        try:
            if shard_dir.is_dir() and any(shard_dir.iterdir()):
                self._shard = EdgeShard.load(str(shard_dir))
            else:
                config = EdgeConfig(vectors={VECTOR_NAME: EdgeVectorParams(size=self.dim, distance=Distance.Cosine)})
                self._shard = EdgeShard.create(str(shard_dir), config)
        except Exception as e:
            if "WouldBlock" in str(e):
                raise GalleryError(f"the gallery at {self.path} is open in another process: close it first, "
                                   f"or share one Qdrant server between processes (GEOLOC_QDRANT_URL)") from e
            raise GalleryError(f"cannot open the gallery at {self.path}: {e}") from e
        self._ensure_indexes()

    def _read_or_write_dim(self, dim: int | None) -> int:
        meta = self.path / META_FILE
        if meta.exists():
            stored = int(json.loads(meta.read_text())["dim"])
            if dim is not None and dim != stored:
                raise GalleryError(f"the gallery at {self.path} holds {stored}-d embeddings, not {dim}-d: "
                                   f"use the model it was built with, or index into a new gallery")
            return stored
        if dim is None:
            raise NoGallery(f"there is no gallery at {self.path} yet: index some photos first")
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = meta.with_suffix(".tmp")
        tmp.write_text(json.dumps({"dim": int(dim), "vector": VECTOR_NAME, "distance": "cosine"}))
        os.replace(tmp, meta)
        return int(dim)

    def _ensure_indexes(self) -> None:
        """Create any missing payload index: at creation, or after a crash that came before them."""
        present = self._shard.info().payload_schema
        for field, kind in PAYLOAD_INDEXES.items():
            if field not in present:
                self._shard.update(UpdateOperation.create_field_index(field, _INDEX_SCHEMAS[kind]))

    # the primitives QdrantGallery builds on
    _native_filter = staticmethod(edge_filter)

    @staticmethod
    def _match_all() -> Filter:
        return Filter()

    def _upsert_batch(self, batch: list[tuple[str, list[float], dict]]) -> None:
        points = [Point(id_, {VECTOR_NAME: vector}, payload) for id_, vector, payload in batch]
        self._shard.update(UpdateOperation.upsert_points(points))

    def _query(self, vector: list[float], k: int, flt: Filter | None, exact: bool) -> list:
        return self._shard.query(QueryRequest(limit=k, query=Query.Nearest(vector, using=VECTOR_NAME), filter=flt,
                                              with_payload=True, params=SearchParams(exact=exact)))

    def _count(self, flt: Filter | None) -> int:
        return self._shard.count(CountRequest(exact=True, filter=flt))

    def _facet(self, key: str, limit: int) -> list:
        return self._shard.facet(FacetRequest(key, limit=limit, exact=True)).hits

    def _delete(self, flt: Filter) -> None:
        self._shard.update(UpdateOperation.delete_points_by_filter(flt))

    def _scroll_page(self, flt: Filter | None, offset, limit: int, with_vectors: bool) -> tuple[list, object]:
        return self._shard.scroll(ScrollRequest(offset=offset, limit=limit, filter=flt,
                                                with_payload=True, with_vector=with_vectors))

    def _retrieve(self, ids: list[str]) -> list:
        return self._shard.retrieve(ids, with_payload=True, with_vector=True)

    def optimize(self) -> None:
        """Merge segments and build HNSW; blocks until done (minutes per 100k points)."""
        self._shard.optimize()

    def close(self) -> None:
        """Flush and release the shard (and its lock); a later open finds every upsert."""
        if self._shard is not None:
            self._shard.flush()
            self._shard.close()
            self._shard = None
