"""The embedded gallery this API holds open, lent to the workers and commands of its host (gallery.remote).

A Qdrant Edge shard admits one process, so the API owns every model's store and the others send their
gallery operations here, one request each, vectors as raw float32 (gallery.wire). Thin: each operation is
one call on the store the API already holds. Never in the public schema; every request presents the
shared secret GEOLOC_INTERNAL_TOKEN (X-Geoloc-Internal-Token), and without that setting every request
is refused. Faults come back as error codes gallery.remote raises again as the same exceptions.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

import numpy as np
from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from geoloc.gallery.base import Gallery, GalleryError, GalleryPoint, NoGallery
from geoloc.gallery.faults import GalleryUnavailable
from geoloc.gallery.open import registered_stores
from geoloc.gallery.remote import PREFIX, TOKEN_HEADER
from geoloc.gallery.wire import MEDIA_TYPE, filter_in, hits_out, pack, unpack
from geoloc.keys import ADMIN, ApiKey
from geoloc.runtime import Runtime
from geoloc.search_api.auth import CALLER, services
from geoloc.search_api.errors import ApiError
from geoloc.search_api.services import Services

router = APIRouter(prefix=PREFIX, include_in_schema=False)

# the platform's own processes: their error messages keep the server's paths (search_api.privacy)
INTERNAL = ApiKey("internal", ADMIN)
Answer = tuple[dict, np.ndarray | None]


def _upsert(gallery: Gallery, head: dict, vectors: np.ndarray | None) -> Answer:
    gallery.upsert([GalleryPoint(id_, vector, payload)
                    for id_, vector, payload in zip(head["ids"], vectors, head["payloads"], strict=True)])
    return {}, None


def _search(gallery: Gallery, head: dict, vectors: np.ndarray | None) -> Answer:
    return hits_out(gallery.search(vectors[0], int(head["k"]), filter_in(head["where"])))


def _scroll(gallery, head: dict, _) -> Answer:
    hits, after = gallery.scroll_page(filter_in(head["where"]), head["offset"], int(head["batch"]),
                                      bool(head["with_vectors"]))
    answer, vectors = hits_out(hits)
    return {**answer, "next": after if after is None or isinstance(after, int) else str(after)}, vectors


def _optimize(gallery: Gallery, *_) -> Answer:
    gallery.optimize()
    return {}, None


ON_A_STORE: dict[str, Callable[[Gallery, dict, np.ndarray | None], Answer]] = {
    "upsert": _upsert,
    "search": _search,
    "count": lambda gallery, head, _: ({"count": gallery.count(filter_in(head["where"]))}, None),
    "collections": lambda gallery, *_: ({"collections": gallery.collections()}, None),
    "delete": lambda gallery, head, _: ({"deleted": gallery.delete(filter_in(head["where"]), head["ids"])}, None),
    "scroll": _scroll,
    "retrieve": lambda gallery, head, _: hits_out(gallery.retrieve(head["ids"])),
    "embedding_model": lambda gallery, *_: ({"embedding_model": gallery.embedding_model()}, None),
    "optimize": _optimize,
}


def _open(runtime: Runtime, head: dict) -> Answer:
    model_id, gallery = runtime.held_store(head.get("model"), head.get("dim"), head.get("encoder"))
    return {"model": model_id, "dim": gallery.dim}, None


def _stores(runtime: Runtime, _: dict) -> Answer:
    return {"stores": registered_stores(runtime.settings)}, None


ON_THE_GALLERY = {"open": _open, "stores": _stores}


def _allowed(request: Request) -> Services:
    """The services, if the caller presents the internal token and this API holds the embedded gallery."""
    svc = services(request)
    settings = svc.settings
    expected, given = settings.internal_token, request.headers.get(TOKEN_HEADER, "")
    if not expected:
        raise ApiError(403, "forbidden", "this API lends its gallery to no process: set GEOLOC_INTERNAL_TOKEN, the "
                                         "same on the API and on the processes beside it")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise ApiError(403, "forbidden", "wrong internal token: set the API's GEOLOC_INTERNAL_TOKEN here too")
    if settings.qdrant_url or settings.gallery_owner_url or settings.edge_shared:
        raise ApiError(503, "gallery_unavailable", "this API does not hold the embedded gallery open (it uses a "
                                                   "Qdrant server, another API's gallery or GEOLOC_GALLERY_SHARED)")
    request.scope.setdefault("state", {})[CALLER] = INTERNAL
    return svc


def _answer(runtime: Runtime, operation: str, body: bytes) -> bytes:
    try:
        head, vectors = unpack(body)
        if operation in ON_THE_GALLERY:
            return pack(*ON_THE_GALLERY[operation](runtime, head))
        gallery = runtime.held_store(head["model"])[1]
        return pack(*ON_A_STORE[operation](gallery, head, vectors))
    except NoGallery as exc:
        raise ApiError(404, "no_gallery", str(exc)) from exc
    except GalleryUnavailable as exc:
        raise ApiError(503, "gallery_unavailable", str(exc)) from exc
    except GalleryError as exc:
        raise ApiError(409, "gallery_error", str(exc)) from exc
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise ApiError(422, "invalid_gallery_request", f"{type(exc).__name__}: {exc}") from exc


@router.post("/{operation}")
async def gallery_operation(operation: str, request: Request) -> Response:
    svc = _allowed(request)
    if operation not in ON_A_STORE and operation not in ON_THE_GALLERY:
        raise ApiError(404, "not_found", f"no gallery operation {operation!r}")
    body = await request.body()
    return Response(await run_in_threadpool(_answer, svc.runtime, operation, body), media_type=MEDIA_TYPE)
