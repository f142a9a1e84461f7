"""The embedded gallery used from a process that does not hold it: each operation goes to the API that does.

A Qdrant Edge shard admits one process (Edge locks its write-ahead log), so on a host without a Qdrant server
the API (`geoloc serve`) holds every model's store open and the workers and commands beside it send their
operations to its internal routes (search_api/routes/internal.py, GEOLOC_GALLERY_OWNER_URL with the secret
GEOLOC_INTERNAL_TOKEN). Vectors travel as raw float32 (gallery.wire). A store is named by its model id, as
gallery.stores names it, so the same code runs on the owner's stores and on these.

An owner that cannot be reached, or that cannot use its gallery now, is GalleryUnavailable, as a locked or
missing embedded gallery is: jobs retry with backoff, the API answers 503.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

import numpy as np
from urllib3 import Retry, Timeout, connection_from_url
from urllib3.exceptions import HTTPError, MaxRetryError
from urllib3.util import parse_url

from geoloc.gallery.base import Gallery, GalleryError, GalleryPoint, Hit, NoGallery, SearchFilter
from geoloc.gallery.faults import GalleryUnavailable
from geoloc.gallery.wire import MEDIA_TYPE, filter_out, hits_in, pack, unpack

PREFIX = "/internal/gallery"
TOKEN_HEADER = "X-Geoloc-Internal-Token"
READ_TIMEOUT_S = 120.0  # any one operation but optimize, which takes as long as it takes
UPSERT_BATCH = 256  # points per request: 1.3 MB of 1280-d floats
# the owner's error codes -> the fault this side raises (any other refusal: GalleryUnavailable)
FAULTS: dict[str, type[Exception]] = {"gallery_unavailable": GalleryUnavailable, "no_gallery": NoGallery,
                                      "gallery_error": GalleryError, "invalid_gallery_request": ValueError}


class OwnerLink:
    """HTTP to the owner: one pool of kept-alive connections, shared by threads; faults raised as gallery faults.

    urllib3 rather than httpx: about 0.6 ms less per operation, a fifth of a small search's round trip.
    """

    def __init__(self, url: str, token: str | None, connect_timeout: float = 5.0):
        self.url = url.rstrip("/")
        self._prefix = (parse_url(self.url).path or "").rstrip("/") + PREFIX
        self._headers = {TOKEN_HEADER: token or "", "Content-Type": MEDIA_TYPE}
        # every operation is idempotent, so a request that met a connection the owner had just closed is sent again
        retry = Retry(total=1, connect=1, read=1, redirect=0, status=0, allowed_methods=None, raise_on_status=False)
        self._pool = connection_from_url(self.url, maxsize=32, retries=retry,  # an API replica's threads
                                         timeout=Timeout(connect=connect_timeout, read=READ_TIMEOUT_S))

    def call(self, operation: str, header: dict, vectors: np.ndarray | None = None,
             wait_for_ever: bool = False) -> tuple[dict, np.ndarray | None]:
        timeout = Timeout(connect=self._pool.timeout.connect_timeout, read=None) if wait_for_ever else None
        try:
            response = self._pool.request("POST", f"{self._prefix}/{operation}", body=pack(header, vectors),
                                          headers=self._headers, **({"timeout": timeout} if timeout else {}))
        except HTTPError as exc:
            reason = exc.reason if isinstance(exc, MaxRetryError) else exc
            raise GalleryUnavailable(
                f"the API holding the gallery at {self.url} cannot be reached ({reason}): start it (geoloc serve), "
                f"or correct GEOLOC_GALLERY_OWNER_URL") from exc
        if response.status != 200:
            raise self._fault(response.status, response.data)
        return unpack(response.data)

    def _fault(self, status: int, body: bytes) -> Exception:
        try:
            error = json.loads(body)["error"]
            code, message = str(error["code"]), str(error["message"])
        except (ValueError, KeyError, TypeError):
            code, message = "", body[:200].decode(errors="replace")
        if status == 403:
            return GalleryUnavailable(f"the API holding the gallery at {self.url} refused this process: {message}")
        return FAULTS.get(code, GalleryUnavailable)(
            message if code in FAULTS else f"the API holding the gallery at {self.url} answered {status}: {message}")

    def close(self) -> None:
        self._pool.close()


def owner_stores(url: str, token: str | None, connect_timeout: float = 5.0) -> dict[str, int]:
    """Model id -> dimension of every store of the owner's gallery."""
    link = OwnerLink(url, token, connect_timeout)
    try:
        return {model: int(dim) for model, dim in link.call("stores", {})[0]["stores"].items()}
    finally:
        link.close()


class OwnedGalleryClient(Gallery):
    """The store of `model_id` (None: the one serving queries) in the gallery the API at `url` holds open;
    registered on first use with `dim` and the `encoder` settings that made it, as gallery.open does."""

    def __init__(self, url: str, token: str | None, model_id: str | None = None, dim: int | None = None,
                 encoder: dict | None = None, connect_timeout: float = 5.0):
        self._link = OwnerLink(url, token, connect_timeout)
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
        """Page by page, each page one request: the owner keeps no cursor between them."""
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

    def optimize(self) -> None:
        self._call("optimize", {}, wait_for_ever=True)

    def close(self) -> None:
        self._link.close()
