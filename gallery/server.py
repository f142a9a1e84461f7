"""The scale-out gallery: one collection on a Qdrant server or cluster, through qdrant-client.

The client's local mode (`location=":memory:"` or `path=`) runs the same calls in pure Python: it stands
in for a server in the tests, at small sizes only (filtered search over 100k points takes seconds there).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import httpx
import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from gallery.base import (
    PAYLOAD_INDEXES,
    QDRANT_COLLECTION,
    VECTOR_NAME,
    Gallery,
    GalleryError,
    GalleryPoint,
    Hit,
    SearchFilter,
    float_bounds,
)

UPSERT_BATCH = 256
RESCORE = models.QuantizationSearchParams(rescore=True, oversampling=2.0)

_INDEX_SCHEMAS = {
    "keyword": models.PayloadSchemaType.KEYWORD,
    "geo": models.PayloadSchemaType.GEO,
    # S2 leaf ids are only ever filtered by range (a cell), never matched one by one
    "integer": models.IntegerIndexParams(type=models.IntegerIndexType.INTEGER, lookup=False, range=True),
}


def server_filter(where: SearchFilter | None, ids: Sequence[str] | None = None) -> models.Filter | None:
    """SearchFilter (and ids) -> one Filter whose `must` conditions are AND-ed; None if no condition."""
    must: list = []
    if ids is not None:
        must.append(models.HasIdCondition(has_id=list(ids)))
    if where is not None:
        if where.collections is not None:
            must.append(models.FieldCondition(key="collection", match=models.MatchAny(any=list(where.collections))))
        if where.cell_ranges is not None:
            ranges = [_in_cell(lo, hi) for lo, hi in where.cell_ranges]
            # an empty `should` matches everything; an empty list of cells must match nothing
            must.append(models.Filter(should=ranges) if ranges else models.HasIdCondition(has_id=[]))
        if where.radius is not None:
            lat, lon, km = where.radius
            must.append(models.FieldCondition(key="location", geo_radius=models.GeoRadius(
                center=models.GeoPoint(lat=lat, lon=lon), radius=km * 1000.0)))
        if where.box is not None:
            south, west, north, east = where.box
            must.append(models.FieldCondition(key="location", geo_bounding_box=models.GeoBoundingBox(
                top_left=models.GeoPoint(lat=north, lon=west), bottom_right=models.GeoPoint(lat=south, lon=east))))
    return models.Filter(must=must) if must else None


def _in_cell(lo: int, hi: int) -> models.FieldCondition:
    gte, lte = float_bounds(lo, hi)
    return models.FieldCondition(key="s2", range=models.Range(gte=gte, lte=lte))


class _Guarded:
    """The client, with transport failures and server refusals raised as GalleryError."""

    def __init__(self, client: QdrantClient, where: str):
        self._client, self._where = client, where

    def __getattr__(self, name):
        method = getattr(self._client, name)

        def call(*args, **kwargs):
            try:
                return method(*args, **kwargs)
            except (ResponseHandlingException, httpx.TransportError) as e:
                raise GalleryError(f"the Qdrant server at {self._where} is unreachable ({e}): start it, "
                                   f"or check GEOLOC_QDRANT_URL") from e
            except UnexpectedResponse as e:
                raise GalleryError(f"the Qdrant server at {self._where} refused {name} "
                                   f"(HTTP {e.status_code}): {e.content.decode(errors='replace')[:300]}") from e

        return call


class ServerGallery(Gallery):
    """The gallery in collection `collection` of the Qdrant at `url` (or of a local-mode stand-in).

    Collection options (shards, replication, on-disk vectors, int8 quantization) apply when this creates
    the collection, with its payload indexes, before any upsert; an existing collection keeps its own.
    `dim=None` opens an existing collection whatever its dimension.
    """

    def __init__(self, url: str | None = None, dim: int | None = None, *, api_key: str | None = None,
                 location: str | None = None, path: str | None = None, collection: str = QDRANT_COLLECTION,
                 shard_number: int | None = None, replication_factor: int | None = None,
                 on_disk: bool = False, int8_quantization: bool = False, timeout: int = 30):
        self.collection = collection
        self._local = url is None
        if self._local:
            client = QdrantClient(location=location, path=path)
        else:
            # the compatibility check would be one more round trip, and only a warning when it fails
            client = QdrantClient(url=url, api_key=api_key, timeout=timeout, check_compatibility=False)
        self._client = _Guarded(client, url or path or location)
        if not self._client.collection_exists(collection):
            if dim is None:
                raise GalleryError(f"there is no gallery collection '{collection}' at {url or path or location} "
                                   f"yet: index some photos first")
            self._create(dim, shard_number, replication_factor, on_disk, int8_quantization)
        config = self._client.get_collection(collection).config
        self.dim = self._stored_dim(config, dim)
        self._quantized = config.quantization_config is not None
        self._ensure_indexes()

    def _create(self, dim: int, shard_number, replication_factor, on_disk: bool, int8: bool) -> None:
        quantization = models.ScalarQuantization(scalar=models.ScalarQuantizationConfig(
            type=models.ScalarType.INT8, always_ram=True)) if int8 else None
        try:
            self._client.create_collection(
                self.collection,
                vectors_config={VECTOR_NAME: models.VectorParams(size=dim, distance=models.Distance.COSINE,
                                                                 on_disk=on_disk)},
                shard_number=shard_number, replication_factor=replication_factor,
                quantization_config=quantization)
        except GalleryError:
            # another worker may have created it between our check and our call
            if not self._client.collection_exists(self.collection):
                raise

    def _stored_dim(self, config, dim: int | None) -> int:
        vectors = config.params.vectors
        if not isinstance(vectors, dict) or VECTOR_NAME not in vectors:
            raise GalleryError(f"collection '{self.collection}' has no vector named '{VECTOR_NAME}': "
                               f"it is not a geoloc gallery")
        stored = vectors[VECTOR_NAME].size
        if dim is not None and dim != stored:
            raise GalleryError(f"collection '{self.collection}' holds {stored}-d embeddings, not {dim}-d: "
                               f"use the model it was built with, or another collection")
        return stored

    def _ensure_indexes(self) -> None:
        """Create any missing payload index, so that no opener upserts into an unindexed collection."""
        present = self._client.get_collection(self.collection).payload_schema
        with warnings.catch_warnings():
            # local mode warns that indexes do nothing there; the same calls matter on a server
            warnings.simplefilter("ignore", UserWarning)
            for field, kind in PAYLOAD_INDEXES.items():
                if field not in present:
                    self._client.create_payload_index(self.collection, field, _INDEX_SCHEMAS[kind], wait=True)

    def _vector(self, vector: np.ndarray) -> list[float]:
        v = np.asarray(vector, dtype=np.float32).ravel()
        if v.shape[0] != self.dim:
            raise GalleryError(f"a {v.shape[0]}-d vector for a gallery of {self.dim}-d embeddings")
        return v.tolist()

    def _search_params(self, exact: bool) -> models.SearchParams | None:
        if self._local:
            return None  # always exact there, and it warns about parameters it ignores
        return models.SearchParams(exact=exact, quantization=RESCORE if self._quantized else None)

    def upsert(self, points: Sequence[GalleryPoint]) -> None:
        for start in range(0, len(points), UPSERT_BATCH):
            batch = [models.PointStruct(id=p.id, vector={VECTOR_NAME: self._vector(p.vector)}, payload=p.payload)
                     for p in points[start:start + UPSERT_BATCH]]
            self._client.upsert(self.collection, points=batch, wait=True)

    def search(self, vector: np.ndarray, k: int, where: SearchFilter | None = None) -> list[Hit]:
        flt = server_filter(where)
        result = self._client.query_points(self.collection, query=self._vector(vector), using=VECTOR_NAME,
                                           query_filter=flt, limit=k, with_payload=True,
                                           search_params=self._search_params(exact=flt is not None))
        return [Hit(str(p.id), float(p.score), p.payload) for p in result.points]

    def count(self, where: SearchFilter | None = None) -> int:
        return self._count(server_filter(where))

    def _count(self, flt: models.Filter | None) -> int:
        return self._client.count(self.collection, count_filter=flt, exact=True).count

    def collections(self) -> dict[str, int]:
        limit = 1024
        while True:
            hits = self._client.facet(self.collection, key="collection", limit=limit, exact=True).hits
            if len(hits) < limit:
                return {str(h.value): int(h.count) for h in hits if h.count > 0}
            limit *= 4

    def delete(self, where: SearchFilter | None = None, ids: Sequence[str] | None = None) -> int:
        if where is None and ids is None:
            raise ValueError("delete needs a filter or ids (SearchFilter() matches every point)")
        flt = server_filter(where, ids) or models.Filter()
        n = self._count(flt)
        if n:
            self._client.delete(self.collection, points_selector=models.FilterSelector(filter=flt), wait=True)
        return n

    def scroll(self, where: SearchFilter | None = None, with_vectors: bool = False,
               batch: int = 512) -> Iterator[Hit]:
        flt, offset = server_filter(where), None
        while True:
            records, offset = self._client.scroll(self.collection, scroll_filter=flt, limit=batch, offset=offset,
                                                  with_payload=True, with_vectors=with_vectors)
            for r in records:
                yield self._hit(r, with_vectors)
            if offset is None:
                return

    def retrieve(self, ids: Sequence[str]) -> list[Hit]:
        """The points with these ids that exist, in the order asked, with their vectors."""
        records = self._client.retrieve(self.collection, list(ids), with_payload=True, with_vectors=True)
        found = {str(r.id): self._hit(r, True) for r in records}
        return [found[i] for i in map(str, ids) if i in found]

    @staticmethod
    def _hit(record, with_vector: bool) -> Hit:
        vector = np.asarray(record.vector[VECTOR_NAME], dtype=np.float32) if with_vector else None
        return Hit(str(record.id), 0.0, record.payload, vector)

    def close(self) -> None:
        self._client.close()
