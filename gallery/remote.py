"""The embedded gallery used from a process that does not hold it: each operation goes to the API that does.

A Qdrant Edge shard admits one process (Edge locks its write-ahead log), so on a host without a Qdrant server
the API (`geoloc serve`) holds every model's store open and the workers and commands beside it
(GEOLOC_GALLERY_VIA_API) send their operations to it over the Unix socket it serves in the data home
(gallery.lending), proving with the secret GEOLOC_INTERNAL_TOKEN that they may. One message each way per
operation, vectors as raw float32 (gallery.wire). A store is named by its model id, as gallery.stores names
it, so the same code runs on the owner's stores and on these.

An owner that cannot be reached, or that cannot use its gallery now, is GalleryUnavailable, as a locked or
missing embedded gallery is: jobs retry with backoff, the API answers 503.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection
from pathlib import Path

import numpy as np

from geoloc.gallery.base import Gallery, GalleryError, GalleryPoint, Hit, NoGallery, SearchFilter
from geoloc.gallery.faults import GalleryUnavailable
from geoloc.gallery.wire import filter_out, hits_in, pack, unpack

READ_TIMEOUT_S = 120.0  # any one operation but optimize, which takes as long as it takes
UPSERT_BATCH = 256  # points per message: 1.3 MB of 1280-d floats
# the owner's error codes -> the fault this side raises (any other: GalleryUnavailable)
FAULTS: dict[str, type[Exception]] = {"gallery_unavailable": GalleryUnavailable, "no_gallery": NoGallery,
                                      "gallery_error": GalleryError, "invalid_gallery_request": ValueError}


class OwnerLink:
    """Connections to the owner's socket, one per thread at a time, kept for the next operation; faults raised
    as gallery faults."""

    def __init__(self, path: Path | str, token: str | None):
        self.path = str(path)
        self._key = (token or "").encode()
        self._idle: list[Connection] = []
        self._lock = threading.Lock()

    def call(self, operation: str, header: dict, vectors: np.ndarray | None = None,
             wait_for_ever: bool = False) -> tuple[dict, np.ndarray | None]:
        message = pack({"op": operation, **header}, vectors)
        while True:
            conn, kept = self._take()
            try:
                conn.send_bytes(message)
                if not conn.poll(None if wait_for_ever else READ_TIMEOUT_S):
                    conn.close()
                    raise GalleryUnavailable(f"the API holding the gallery at {self.path} did not answer a "
                                             f"{operation} within {READ_TIMEOUT_S:.0f} s")
                answer, answers = unpack(conn.recv_bytes())
            except (EOFError, OSError) as exc:
                conn.close()
                if kept:  # the owner closed it meanwhile (restarted): every operation is idempotent, send again
                    continue
                raise self._away(exc) from exc
            with self._lock:
                self._idle.append(conn)
            error = answer.get("error")
            if error is not None:
                code, text = error["code"], error["message"]
                raise FAULTS.get(code, GalleryUnavailable)(
                    text if code in FAULTS else f"the API holding the gallery at {self.path} failed: {text}")
            return answer, answers

    def _take(self) -> tuple[Connection, bool]:
        """A kept connection (True), else a new one (False)."""
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        if not self._key:
            raise GalleryUnavailable("set GEOLOC_INTERNAL_TOKEN, the same as the API's, to use the gallery it holds")
        try:
            return Client(self.path, family="AF_UNIX", authkey=self._key), False
        except AuthenticationError as exc:
            raise GalleryUnavailable(f"the API holding the gallery at {self.path} refused this process: wrong "
                                     f"internal token: set the API's GEOLOC_INTERNAL_TOKEN here too") from exc
        except (EOFError, OSError) as exc:
            raise self._away(exc) from exc

    def _away(self, exc: BaseException) -> GalleryUnavailable:
        return GalleryUnavailable(
            f"the API holding the gallery cannot be reached at {self.path} ({exc or type(exc).__name__}): start "
            f"`geoloc serve` on this data home with GEOLOC_INTERNAL_TOKEN set, the same as here")

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def owner_stores(path: Path | str, token: str | None) -> dict[str, int]:
    """Model id -> dimension of every store of the owner's gallery."""
    link = OwnerLink(path, token)
    try:
        return {model: int(dim) for model, dim in link.call("stores", {})[0]["stores"].items()}
    finally:
        link.close()


class OwnedGalleryClient(Gallery):
    """The store of `model_id` (None: the one serving queries) in the gallery the API serving on socket `path`
    holds open; registered on first use with `dim` and the `encoder` settings that made it, as gallery.open does."""

    def __init__(self, path: Path | str, token: str | None, model_id: str | None = None, dim: int | None = None,
                 encoder: dict | None = None):
        self._link = OwnerLink(path, token)
        try:
            opened = self._link.call("open", {"model": model_id, "dim": dim, "encoder": encoder})[0]
        except BaseException:
            self._link.close()
            raise
        self.model_id, self.dim = str(opened["model"]), int(opened["dim"])

    def _call(self, operation: str, header: dict, vectors: np.ndarray | None = None,
              wait_for_ever: bool = False) -> tuple[dict, np.ndarray | None]:
        return self._link.call(operation, {"model": self.model_id, **header}, vectors, wait_for_ever)

    def upsert(self, points: Sequence[GalleryPoint]) -> None:
        for start in range(0, len(points), UPSERT_BATCH):
            batch = points[start:start + UPSERT_BATCH]
            vectors = [np.asarray(p.vector, dtype=np.float32).ravel() for p in batch]
            wrong = next((v.shape[0] for v in vectors if v.shape[0] != self.dim), None)
            if wrong is not None:
                raise GalleryError(f"a {wrong}-d vector for a gallery of {self.dim}-d embeddings")
            self._call("upsert", {"ids": [p.id for p in batch], "payloads": [p.payload for p in batch]},
                       np.stack(vectors))

    def search(self, vector: np.ndarray, k: int, where: SearchFilter | None = None) -> list[Hit]:
        query = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        return hits_in(*self._call("search", {"k": int(k), "where": filter_out(where)}, query))

    def count(self, where: SearchFilter | None = None) -> int:
        return int(self._call("count", {"where": filter_out(where)})[0]["count"])

    def collections(self) -> dict[str, int]:
        return {str(name): int(n) for name, n in self._call("collections", {})[0]["collections"].items()}

    def delete(self, where: SearchFilter | None = None, ids: Sequence[str] | None = None) -> int:
        if where is None and ids is None:
            raise ValueError("delete needs a filter or ids (SearchFilter() matches every point)")
        header = {"where": filter_out(where), "ids": None if ids is None else [str(i) for i in ids]}
        return int(self._call("delete", header)[0]["deleted"])

    def scroll(self, where: SearchFilter | None = None, with_vectors: bool = False,
               batch: int = 512) -> Iterator[Hit]:
        """Page by page, each page one message: the owner keeps no cursor between them."""
        offset = None
        while True:
            header, vectors = self._call("scroll", {"where": filter_out(where), "with_vectors": with_vectors,
                                                    "batch": int(batch), "offset": offset})
            yield from hits_in(header, vectors)
            offset = header["next"]
            if offset is None:
                return

    def retrieve(self, ids: Sequence[str]) -> list[Hit]:
        return hits_in(*self._call("retrieve", {"ids": [str(i) for i in ids]}))

    def embedding_model(self) -> str | None:
        return self._call("embedding_model", {})[0]["embedding_model"]

    def optimize(self) -> dict:
        return self._call("optimize", {}, wait_for_ever=True)[0].get("search", {})

    def close(self) -> None:
        self._link.close()
