"""What the two Qdrant galleries share: the Gallery methods, written once over a few backend primitives.

EdgeGallery (qdrant-edge-py, in-process) and ServerGallery (qdrant-client) differ only in how they call
Qdrant: each provides the primitives below (a batch upsert, a query, a count, a facet page, a delete, a
scroll page, a retrieve, and its native filter), and this class holds the logic around them: the
dimension check, batching, facet paging, the refusal of unfiltered deletes, scroll paging, retrieve order.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from geoloc.gallery.base import VECTOR_NAME, Gallery, GalleryError, GalleryPoint, Hit, SearchFilter

UPSERT_BATCH = 256


class QdrantGallery(Gallery):
    """A Gallery over one Qdrant store; subclasses provide the primitives, which take native filters.

    `plans_filters`: the store was made with FULL_SCAN_KB, so the engine scores a cell's photos whole up to that
    size and uses the graph beyond it; a store made before keeps exact filtered searches (its graph took 2,000)."""

    plans_filters = False

    # ------------------------------------------------------------------------------ backend primitives

    @staticmethod
    @abstractmethod
    def _native_filter(where: SearchFilter | None, ids: Sequence[str] | None = None) -> Any:
        """The backend's filter for `where` (and ids): its conditions AND-ed; None if no condition."""

    @staticmethod
    @abstractmethod
    def _match_all() -> Any:
        """The backend's filter without conditions: every point."""

    @abstractmethod
    def _upsert_batch(self, batch: list[tuple[str, list[float], dict]]) -> None:
        """Upsert (id, vector, payload) points, searchable on return."""

    @abstractmethod
    def _query(self, vector: list[float], k: int, flt: Any, exact: bool) -> Iterable:
        """The top-k scored points (id, score, payload) matching `flt`."""

    @abstractmethod
    def _count(self, flt: Any) -> int:
        """The exact number of points matching `flt` (None: all)."""

    @abstractmethod
    def _facet(self, key: str, limit: int) -> Sequence:
        """Up to `limit` hits (value, count) of the exact facet of payload field `key`."""

    @abstractmethod
    def _delete(self, flt: Any) -> None:
        """Delete the points matching `flt`, gone on return."""

    @abstractmethod
    def _scroll_page(self, flt: Any, offset: Any, limit: int, with_vectors: bool) -> tuple[Sequence, Any]:
        """Up to `limit` records from `offset` on, with payloads, and the next offset (None at the end)."""

    @abstractmethod
    def _retrieve(self, ids: list[str]) -> Iterable:
        """The records of these ids that exist, in any order, with payloads and vectors."""

    # ---------------------------------------------------------------------------------- Gallery methods

    def _vector(self, vector: np.ndarray) -> list[float]:
        v = np.asarray(vector, dtype=np.float32).ravel()
        if v.shape[0] != self.dim:
            raise GalleryError(f"a {v.shape[0]}-d vector for a gallery of {self.dim}-d embeddings")
        return v.tolist()

    def upsert(self, points: Sequence[GalleryPoint]) -> None:
        for start in range(0, len(points), UPSERT_BATCH):
            self._upsert_batch([(p.id, self._vector(p.vector), p.payload)
                                for p in points[start:start + UPSERT_BATCH]])

    def search(self, vector: np.ndarray, k: int, where: SearchFilter | None = None) -> list[Hit]:
        flt = self._native_filter(where)
        points = self._query(self._vector(vector), k, flt, exact=flt is not None and not self.plans_filters)
        return [Hit(str(p.id), float(p.score), p.payload) for p in points]

    def count(self, where: SearchFilter | None = None) -> int:
        return self._count(self._native_filter(where))

    def collections(self) -> dict[str, int]:
        limit = 1024
        while True:
            hits = self._facet("collection", limit)
            if len(hits) < limit:
                # deleted values stay in the index with a count of zero
                return {str(h.value): int(h.count) for h in hits if h.count > 0}
            limit *= 4

    def delete(self, where: SearchFilter | None = None, ids: Sequence[str] | None = None) -> int:
        if where is None and ids is None:
            raise ValueError("delete needs a filter or ids (SearchFilter() matches every point)")
        flt = self._native_filter(where, ids) or self._match_all()
        n = self._count(flt)
        if n:
            self._delete(flt)
        return n

    def scroll(self, where: SearchFilter | None = None, with_vectors: bool = False,
               batch: int = 512) -> Iterator[Hit]:
        offset = None
        while True:
            hits, offset = self.scroll_page(where, offset, batch, with_vectors)
            yield from hits
            if offset is None:
                return

    def scroll_page(self, where: SearchFilter | None, offset: Any, limit: int,
                    with_vectors: bool = False) -> tuple[list[Hit], Any]:
        """One page of `scroll` and the offset of the next (None at the end): paging without a held cursor."""
        records, offset = self._scroll_page(self._native_filter(where), offset, limit, with_vectors)
        return [self._hit(r, with_vectors) for r in records], offset

    def retrieve(self, ids: Sequence[str]) -> list[Hit]:
        """The points with these ids that exist, in the order asked, with their vectors."""
        found = {str(r.id): self._hit(r, True) for r in self._retrieve(list(ids))}
        return [found[i] for i in map(str, ids) if i in found]

    @staticmethod
    def _hit(record, with_vector: bool) -> Hit:
        vector = np.asarray(record.vector[VECTOR_NAME], dtype=np.float32) if with_vector else None
        return Hit(str(record.id), 0.0, record.payload, vector)
