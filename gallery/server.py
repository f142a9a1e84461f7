"""The scale-out gallery: one collection on a Qdrant server or cluster, through qdrant-client.

The client's local mode (`location=":memory:"` or `path=`) runs the same calls in pure Python: it stands
in for a server in the tests, at small sizes only (filtered search over 100k points takes seconds there).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import httpx
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from geoloc.gallery.base import (DEFAULT_HNSW_EF, FULL_SCAN_KB, PAYLOAD_INDEXES, QDRANT_COLLECTION, VECTOR_NAME,
                                 GalleryError, NoGallery, SearchFilter, box_ranges, float_bounds)
from geoloc.gallery.qdrant_base import QdrantGallery
from geoloc.settings import GalleryTuning

RESCORE = models.QuantizationSearchParams(rescore=True, oversampling=2.0)

_INDEX_SCHEMAS = {
    "keyword": models.PayloadSchemaType.KEYWORD,
    "geo": models.PayloadSchemaType.GEO,
    # S2 leaf ids are only ever filtered by range (a cell), never matched one by one
    "integer": models.IntegerIndexParams(type=models.IntegerIndexType.INTEGER, lookup=False, range=True),
}


def server_filter(where: SearchFilter | None, ids: Sequence[str] | None = None) -> models.Filter | None:
    """SearchFilter (and ids) -> one Filter: its `must` conditions AND at least one of its `should` (cells)."""
    must, should = [], None
    if ids is not None:
        must.append(models.HasIdCondition(has_id=list(ids)))
    if where is not None:
        if where.collections is not None:
            must.append(models.FieldCondition(key="collection", match=models.MatchAny(any=list(where.collections))))
        if where.cell_ranges is not None:
            # at the top level: nested under `must`, a cell's every point was checked again (5.1 against 3.2 ms
            # for 10,000 of a million photos); no cell must match nothing (an empty `should` matches everything)
            should = [_in_cell(lo, hi) for lo, hi in where.cell_ranges] or None
            must.extend([] if should else [models.HasIdCondition(has_id=[])])
        if where.radius is not None:
            lat, lon, km = where.radius
            must.append(models.FieldCondition(key="location", geo_radius=models.GeoRadius(
                center=models.GeoPoint(lat=lat, lon=lon), radius=km * 1000.0)))
        if where.box is not None:
            (south, north), lon_ranges = box_ranges(where.box)
            must.append(models.FieldCondition(key="location.lat", range=models.Range(gte=south, lte=north)))
            must.append(models.Filter(should=[
                models.FieldCondition(key="location.lon", range=models.Range(gte=w, lte=e)) for w, e in lon_ranges]))
    return models.Filter(must=must or None, should=should) if must or should else None


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


class ServerGallery(QdrantGallery):
    """The gallery in collection `collection` of the Qdrant at `url` (or of a local-mode stand-in).

    Collection options (shards, replication, on-disk vectors, int8 quantization) apply when this creates
    the collection, with its payload indexes, before any upsert; an existing collection keeps its own.
    `dim=None` opens an existing collection whatever its dimension.
    """

    def __init__(self, url: str | None = None, dim: int | None = None, *, api_key: str | None = None,
                 location: str | None = None, path: str | None = None, collection: str = QDRANT_COLLECTION,
                 shard_number: int | None = None, replication_factor: int | None = None,
                 on_disk: bool = False, int8_quantization: bool = False, timeout: int = 30,
                 tuning: GalleryTuning | None = None):
        self.collection = collection
        tuning = tuning or GalleryTuning()
        self.hnsw_ef, self._graph = tuning.hnsw_ef or DEFAULT_HNSW_EF, models.HnswConfigDiff(
            m=tuning.hnsw_m, ef_construct=tuning.hnsw_ef_construct, full_scan_threshold=FULL_SCAN_KB)
        self._local = url is None
        if self._local:
            client = QdrantClient(location=location, path=path)
        else:
            # the compatibility check would be one more round trip, and only a warning when it fails
            client = QdrantClient(url=url, api_key=api_key, timeout=timeout, check_compatibility=False)
        self._client = _Guarded(client, url or path or location)
        if not self._client.collection_exists(collection):
            if dim is None:
                raise NoGallery(f"there is no gallery collection '{collection}' at {url or path or location} "
                                   f"yet: index some photos first")
            self._create(dim, shard_number, replication_factor, on_disk, int8_quantization)
        config = self._client.get_collection(collection).config
        self.dim = self._stored_dim(config, dim)
        self._quantized = config.quantization_config is not None
        self.plans_filters = not self._local and config.hnsw_config.full_scan_threshold >= FULL_SCAN_KB
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
                hnsw_config=self._graph, quantization_config=quantization)
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

    def _search_params(self, exact: bool) -> models.SearchParams | None:
        if self._local:
            return None  # always exact there, and it warns about parameters it ignores
        return models.SearchParams(exact=exact, hnsw_ef=self.hnsw_ef, quantization=RESCORE if self._quantized else None)

    # the primitives QdrantGallery builds on
    _native_filter = staticmethod(server_filter)

    @staticmethod
    def _match_all() -> models.Filter:
        return models.Filter()

    def _upsert_batch(self, batch: list[tuple[str, list[float], dict]]) -> None:
        points = [models.PointStruct(id=id_, vector={VECTOR_NAME: vector}, payload=payload)
                  for id_, vector, payload in batch]
        self._client.upsert(self.collection, points=points, wait=True)

    def _query(self, vector: list[float], k: int, flt: models.Filter | None, exact: bool) -> list:
        return self._client.query_points(self.collection, query=vector, using=VECTOR_NAME, query_filter=flt,
                                         limit=k, with_payload=True,
                                         search_params=self._search_params(exact=exact)).points

    def _count(self, flt: models.Filter | None) -> int:
        return self._client.count(self.collection, count_filter=flt, exact=True).count

    def _facet(self, key: str, limit: int) -> list:
        return self._client.facet(self.collection, key=key, limit=limit, exact=True).hits

    def _delete(self, flt: models.Filter) -> None:
        self._client.delete(self.collection, points_selector=models.FilterSelector(filter=flt), wait=True)

    def _scroll_page(self, flt: models.Filter | None, offset, limit: int, with_vectors: bool) -> tuple[list, object]:
        return self._client.scroll(self.collection, scroll_filter=flt, limit=limit, offset=offset,
                                   with_payload=True, with_vectors=with_vectors)

    def _retrieve(self, ids: list[str]) -> list:
        return self._client.retrieve(self.collection, ids, with_payload=True, with_vectors=True)

    def close(self) -> None:
        self._client.close()
