"""The embedded gallery: one Qdrant Edge shard on local disk (qdrant-edge-py, Qdrant's engine in-process).

Edge has no background optimizer: upserts land in plain segments, searchable at once, and only
`optimize()` builds HNSW (minutes per 100k points). Edge's own optimize holds the shard and the interpreter
for that long, so the index is built on a copy by another process and swapped in (gallery.edge_index), by
`geoloc maintenance index`, the API's index job, or on its own after GEOLOC_INDEX_AFTER_UPSERTS upserts.
The payload indexes are created with the shard, before any upsert, so a filter selects a cell's points before
any vector is scored; a cell below FULL_SCAN_KB is then scored whole (stores made before it ask for exact).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from qdrant_edge import (CountRequest, Distance, EdgeConfig, EdgeShard, EdgeVectorParams, FacetRequest, Filter,
                         HnswIndexConfig, IntegerIndexParams, Memory, PayloadSchemaType, Point, Query, QueryRequest,
                         ScalarQuantizationConfig, ScalarType, ScrollRequest, TurboQuantBitSize,
                         TurboQuantQuantizationConfig, UpdateOperation)

from geoloc.gallery.base import (DEFAULT_HNSW_EF, FULL_SCAN_KB, PAYLOAD_INDEXES, VECTOR_NAME, GalleryError, NoGallery,
                                 SearchFilter)
from geoloc.gallery.edge_meta import META_FILE, SHARD_DIR, read_meta, write_meta
from geoloc.gallery.edge_query import edge_filter, search_params
from geoloc.gallery.faults import GalleryUnavailable, check_directory, describe, disk_faults, is_fault
from geoloc.gallery.qdrant_base import QdrantGallery
from geoloc.gallery.search_breadth import Breadth
from geoloc.settings import GalleryTuning

log = logging.getLogger(__name__)

OLD_SHARD_DIR = "shard.old"  # the shard a rebuilt one replaces, until the writes made meanwhile are replayed
TRASH_DIR = "shard.trash"  # a replaced shard, being removed

_INDEX_SCHEMAS = {
    "keyword": PayloadSchemaType.Keyword,
    "geo": PayloadSchemaType.Geo,
    # S2 leaf ids are only ever filtered by range (a cell), never matched one by one
    "integer": IntegerIndexParams(lookup=False, range=True),
}

# the quantized copies a new shard keeps in RAM, by GEOLOC_EDGE_QUANTIZATION (None: float32 vectors in RAM only);
# measured by bench/gallery_scale.py (README "Speed"): TurboQuant's 4 bits find what int8 finds, sooner
_QUANTIZATIONS: dict[str, Callable] = {
    "float32": lambda: None,
    "int8": lambda: ScalarQuantizationConfig(ScalarType.Int8, quantile=0.99, memory=Memory.Pinned),
    "turbo4": lambda: TurboQuantQuantizationConfig(bits=TurboQuantBitSize.Bits4, memory=Memory.Pinned),
}


# a new shard's search threads (kept with it). The engine's default, one per CPU, hands each search to a pool and
# costs more than it saves (2 cores, median ms): 0.50 against 0.81 at 1,000 photos after a forward pass; 1.42
# against 1.64 at 200,000 (two segments, ef 1024); exact searches alike. Concurrent requests use the cores anyway.
SEARCH_THREADS = 1


def _on_disk(method: Callable) -> Callable:
    """A shard call made only while the gallery directory is sound, its faults explained (gallery.faults)."""
    @functools.wraps(method)
    def guarded(self: EdgeGallery, *args, **kwargs):
        if self._closed:
            raise GalleryError(f"the gallery at {self.path} is closed")
        with self._using, disk_faults(self.path):
            self._follow_directory()
            return method(self, *args, **kwargs)

    return guarded


class EdgeGallery(QdrantGallery):
    """The gallery at `path`: `path/shard` (the Edge shard) and `path/gallery.json` (gallery.edge_meta).

    `dim=None` opens an existing gallery whatever its dimension (listing, deleting); creating one needs it.
    Only one process may hold the gallery open at a time: Edge locks its write-ahead log.
    `tuning` (default: read from the environment, settings.GalleryTuning): `hnsw_ef`, the candidates an HNSW
    search keeps (unset: what the last index build measured, see hnsw_ef); `hnsw_m` and `hnsw_ef_construct`, the
    graph a new shard builds; `index_after_upserts`, the upserted points after which the index is built again on
    its own.
    `quantization` (None: `edge_quantization` of the tuning): "int8" or "turbo4", a new shard keeps quantized
    copies of the vectors in RAM (int8 scalars, or TurboQuant's 4 bits a dimension), searched first and rescored
    with the float32 originals, which stay on disk; "float32" keeps only those, in RAM. An existing shard keeps
    the layout it was made with.
    """

    def __init__(self, path: str | Path, dim: int | None = None, *, tuning: GalleryTuning | None = None,
                 quantization: str | None = None):
        from geoloc.gallery.edge_index import IndexBuilder

        self.path = Path(path)
        self.dim = dim
        tuning = tuning or GalleryTuning()
        self._tuned_ef, self.quantization = tuning.hnsw_ef, quantization or tuning.edge_quantization
        self.breadth: Breadth | None = None  # measured by the store's last index build (gallery.json)
        self._graph = (tuning.hnsw_m, tuning.hnsw_ef_construct)
        self._using, self._writing = threading.RLock(), threading.Lock()  # every shard call; every write
        self._journal: list | None = None  # writes made while a copy of the shard is being indexed
        self.index = IndexBuilder(self, tuning.index_after_upserts)
        self._shard: EdgeShard | None = None
        self._closed = False
        self._open(create=True)

    def _open(self, create: bool) -> None:
        """Read the dimension and load the shard (`create`: make both if the gallery is new), remembering which
        directory it was loaded from."""
        if create and not self.path.exists():
            if self.dim is None:
                raise NoGallery(f"there is no gallery at {self.path} yet: index some photos first")
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise describe(self.path, exc) from exc
        with disk_faults(self.path):
            self.dim = self._read_or_write_dim(self.dim, create)
            info = os.stat(self.path)
            self._shard = self._load_shard()
            self._directory = (info.st_dev, info.st_ino)
            self._ensure_indexes()

    def _load_shard(self) -> EdgeShard:
        shard_dir = self.path / SHARD_DIR
        if (self.path / OLD_SHARD_DIR).is_dir():  # a swap stopped before its replay: the old shard holds every write
            shutil.rmtree(shard_dir, ignore_errors=True)
            os.replace(self.path / OLD_SHARD_DIR, shard_dir)
        try:
            if shard_dir.is_dir() and any(shard_dir.iterdir()):
                return EdgeShard.load(str(shard_dir))
            return EdgeShard.create(str(shard_dir), self._config())
        except Exception as e:
            if "WouldBlock" in str(e):
                raise GalleryUnavailable(
                    f"the gallery at {self.path} is open in another process: if a serving API holds it, send it "
                    f"this process's gallery operations (GEOLOC_GALLERY_VIA_API=1), else close it first (or use one "
                    f"Qdrant server: GEOLOC_QDRANT_URL)") from e
            if is_fault(e):
                raise
            raise GalleryError(f"cannot open the gallery at {self.path}: {e}") from e

    def _config(self) -> EdgeConfig:
        graph = HnswIndexConfig(*self._graph, full_scan_threshold=FULL_SCAN_KB)
        quantized = _QUANTIZATIONS[self.quantization]()
        vectors = EdgeVectorParams(size=self.dim, distance=Distance.Cosine, memory=Memory.Cold if quantized else None)
        return EdgeConfig(vectors={VECTOR_NAME: vectors}, hnsw_config=graph, quantization_config=quantized,
                          max_search_threads=SEARCH_THREADS)

    @property
    def hnsw_ef(self) -> int:
        """GEOLOC_HNSW_EF when set, else the breadth the store's last index build measured, else the default."""
        return self._tuned_ef or (self.breadth.hnsw_ef if self.breadth else DEFAULT_HNSW_EF)

    @hnsw_ef.setter
    def hnsw_ef(self, ef: int | None) -> None:
        self._tuned_ef = ef

    def _search_params(self, exact: bool, filtered: bool = False):
        """A cell too large to scan whole goes to the graph: the breadth, measured unfiltered, is never fewer there
        than the default it searched with before (unless GEOLOC_HNSW_EF says so)."""
        ef = self.hnsw_ef if self._tuned_ef or not filtered else max(self.hnsw_ef, DEFAULT_HNSW_EF)
        return search_params(exact, ef)

    def _read_or_write_dim(self, dim: int | None, create: bool) -> int:
        data = read_meta(self.path)
        if data is not None:
            stored, self.plans_filters = int(data["dim"]), "full_scan_kb" in data
            self.breadth = Breadth.from_dict(data.get("search"))
            if dim is not None and dim != stored:
                raise GalleryError(f"the gallery at {self.path} holds {stored}-d embeddings, not {dim}-d: "
                                   f"use the model it was built with, or index into a new gallery")
            return stored
        if not create:
            raise GalleryUnavailable(f"the gallery directory {self.path} was replaced by one without a gallery "
                                     f"({META_FILE} is missing): restore it from a backup")
        if dim is None:
            raise NoGallery(f"there is no gallery at {self.path} yet: index some photos first")
        write_meta(self.path, {"dim": int(dim), "vector": VECTOR_NAME, "distance": "cosine",
                               "full_scan_kb": FULL_SCAN_KB})
        self.plans_filters = True
        return int(dim)

    def _follow_directory(self) -> None:
        """Load the shard again if the gallery directory is not the one it was loaded from (restored from a
        backup, say): the old shard's files are gone, and writing on into them would lose every write."""
        info = check_directory(self.path)
        if self._shard is not None and (info.st_dev, info.st_ino) == self._directory:
            return
        stale, self._shard = self._shard, None
        if stale is not None:
            try:
                stale.close()
            except Exception:  # its files are gone: nothing left to flush into
                pass
        self._open(create=False)

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

    def upsert(self, points) -> None:
        with self._writing:
            super().upsert(points)
        self.index.noticed(len(points))

    def delete(self, where: SearchFilter | None = None, ids: Sequence[str] | None = None) -> int:
        with self._writing:
            return super().delete(where, ids)

    def _write(self, operation: UpdateOperation) -> None:
        self._shard.update(operation)
        if self._journal is not None:
            self._journal.append(operation)

    @_on_disk
    def _upsert_batch(self, batch: list[tuple[str, list[float], dict]]) -> None:
        self._write(UpdateOperation.upsert_points([Point(id_, {VECTOR_NAME: v}, p) for id_, v, p in batch]))

    @_on_disk
    def _query(self, vector: list[float], k: int, flt: Filter | None, exact: bool) -> list:
        return self._shard.query(QueryRequest(limit=k, query=Query.Nearest(vector, using=VECTOR_NAME), filter=flt,
                                              with_payload=True, params=self._search_params(exact, flt is not None)))

    @_on_disk
    def _count(self, flt: Filter | None) -> int:
        return self._shard.count(CountRequest(exact=True, filter=flt))

    @_on_disk
    def _facet(self, key: str, limit: int) -> list:
        return self._shard.facet(FacetRequest(key, limit=limit, exact=True)).hits

    @_on_disk
    def _delete(self, flt: Filter) -> None:
        self._write(UpdateOperation.delete_points_by_filter(flt))

    @_on_disk
    def _scroll_page(self, flt: Filter | None, offset, limit: int, with_vectors: bool) -> tuple[list, object]:
        return self._shard.scroll(ScrollRequest(offset=offset, limit=limit, filter=flt,
                                                with_payload=True, with_vector=with_vectors))

    @_on_disk
    def _retrieve(self, ids: list[str]) -> list:
        return self._shard.retrieve(ids, with_payload=True, with_vector=True)

    def optimize(self) -> dict:
        """Merge segments and build HNSW, searches going on meanwhile; returns when the new index serves, with the
        search breadth measured on it."""
        return self.index.build()

    @_on_disk
    def _flush(self) -> None:
        self._shard.flush()

    def _copy_shard(self, to: Path) -> None:
        """Copy the shard for an index build (writes wait meanwhile, searches go on); journal later writes."""
        shutil.rmtree(self.path / TRASH_DIR, ignore_errors=True)  # left by a removal that was stopped
        with self._writing:
            self._flush()
            shutil.copytree(self.path / SHARD_DIR, to)
            self._journal = []

    def _drop_journal(self) -> None:
        with self._writing:
            self._journal = None

    def _swap_in(self, built: Path, breadth: Breadth | None) -> None:
        """Serve from the shard in `built` (a copy of this one, indexed), with the writes made since the copy, at
        the search breadth measured on it (None: not measured, the last one measured stays)."""
        live, old = self.path / SHARD_DIR, self.path / OLD_SHARD_DIR
        with self._writing, self._using, disk_faults(self.path):
            journal, self._journal = self._journal or [], None
            self._shard.flush()
            self._shard.close()
            os.replace(live, old)
            os.replace(built, live)
            try:
                self._shard = EdgeShard.load(str(live))
            except Exception:
                os.replace(live, built)
                os.replace(old, live)
                self._shard = EdgeShard.load(str(live))
                raise
            for operation in journal:
                self._shard.update(operation)
            self._shard.flush()
            os.replace(old, self.path / TRASH_DIR)
            if breadth is not None:  # not measured: the last breadth measured is the better guess
                self._record_breadth(breadth)
        shutil.rmtree(self.path / TRASH_DIR, ignore_errors=True)

    def _record_breadth(self, breadth: Breadth) -> None:
        """Serve with `breadth` and keep it in gallery.json. The new index already serves: a description that
        cannot be written costs only the breadth after a restart (the last one recorded), never the build."""
        self.breadth = breadth
        try:
            meta = read_meta(self.path)
            if meta is not None:  # a missing one is reported when the gallery is next opened
                write_meta(self.path, {**meta, "search": breadth.to_dict()})
        except (OSError, GalleryUnavailable) as exc:
            log.warning("the gallery at %s serves with %d candidates but could not record it: %s", self.path,
                        breadth.hnsw_ef, exc)

    def close(self) -> None:
        """Flush and release the shard (and its lock); a later open finds every upsert. With the gallery
        directory gone there is nothing left to flush into: the shard is released all the same."""
        self.index.stop()
        with self._using:
            self._release()

    def _release(self) -> None:
        shard, self._shard, self._closed = self._shard, None, True
        if shard is None:
            return
        try:
            try:
                check_directory(self.path)
            except GalleryUnavailable as exc:
                log.warning("closing the gallery without flushing it: %s", exc)
            else:
                with disk_faults(self.path):
                    shard.flush()
        finally:
            shard.close()
