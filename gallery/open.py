"""Open the gallery the settings point at: a Qdrant server when GEOLOC_QDRANT_URL is set; else the embedded
gallery (Edge on disk) held open by the API serving on this data home when GEOLOC_GALLERY_VIA_API is set
(gallery.remote: what workers and commands beside a serving API use); else Edge on disk held open by this
process (or opened per operation: GEOLOC_GALLERY_SHARED, gallery.shared); and in it, the store of one
embedding model (gallery.stores).

An embedded gallery leaves a mark in the data home once made, so a gallery directory that later goes missing
(deleted, a volume not mounted) is reported as missing rather than silently started again empty. Disk faults
and locks held too long by another process become GalleryUnavailable (gallery.faults).
"""

from __future__ import annotations

from datetime import datetime, timezone

from geoloc.gallery.base import QDRANT_COLLECTION, Gallery, GalleryError, NoGallery
from geoloc.gallery.faults import GalleryUnavailable, describe
from geoloc.gallery.stores import TOP_STORE, ModelStores
from geoloc.settings import Settings

MARK_FILE = "gallery.made"  # in the data home, beside the gallery directory
OWNER_SOCKET = "gallery.sock"  # in the data home: where the API holding the gallery lends it (gallery.lending)


def open_gallery(settings: Settings, dim: int | None = None, model_id: str | None = None,
                 encoder: dict | None = None) -> Gallery:
    """The store of `model_id` (registered on first use, with the `encoder` settings that made it), or the
    one serving queries when no model is named. `dim=None` opens an existing store whatever its dimension;
    creating one needs it."""
    if settings.gallery_via_api and not settings.qdrant_url:  # the owner registers, opens and marks
        from geoloc.gallery.remote import OwnedGalleryClient

        return OwnedGalleryClient(settings.home / OWNER_SOCKET, settings.internal_token, model_id, dim, encoder)
    _check_not_lost(settings)
    try:
        stores = _stores(settings)
        if model_id is None:
            serving = stores.serving()
            store = TOP_STORE if serving is None else stores.store_of(serving)
        else:
            top_model = None if stores.store_of(model_id) else _adopt_top_store(settings, stores)
            store = stores.claim(model_id, dim, encoder, top_model)
        gallery = _open_store(settings, store, dim)
    except GalleryError:
        raise
    except OSError as exc:  # the registry's lock or directory
        raise describe(settings.gallery_dir, exc) from exc
    _mark(settings)
    return gallery


def registered_stores(settings: Settings) -> dict[str, int]:
    """Model id -> dimension of every store the gallery holds (a gallery from before stores is registered
    under the model it holds first)."""
    if settings.gallery_via_api and not settings.qdrant_url:
        from geoloc.gallery.remote import owner_stores

        return owner_stores(settings.home / OWNER_SOCKET, settings.internal_token)
    _check_not_lost(settings)
    stores = _stores(settings)
    try:
        _adopt_top_store(settings, stores)
    except OSError as exc:
        raise describe(settings.gallery_dir, exc) from exc
    return {model_id: entry["dim"] for model_id, entry in stores.read()["stores"].items()}


def open_every_store(settings: Settings, opened: dict[str, Gallery]) -> dict[str, Gallery]:
    """`opened` (model id -> store this process holds open) completed with every other store of the gallery."""
    for model_id, dim in registered_stores(settings).items():
        if model_id not in opened:
            opened[model_id] = open_gallery(settings, dim, model_id)
    return opened


def hold_store(settings: Settings, opened: dict[str, Gallery], model_id: str | None, dim: int | None = None,
               encoder: dict | None = None) -> tuple[str, Gallery]:
    """The store of `model_id` (None: the serving one) and its model id, from `opened` (model id -> store this
    process holds open) or opened into it: what the owner of an embedded gallery lends (gallery.lending)."""
    if model_id is None:
        open_every_store(settings, opened)  # adopts a gallery from before stores
        model_id = _stores(settings).serving()
        if model_id is None:
            raise NoGallery(f"there is no gallery at {settings.gallery_dir} yet: index some photos first")
    gallery = opened.get(model_id)
    if gallery is None:
        if dim is None and model_id not in registered_stores(settings):
            raise NoGallery(f"the gallery holds no store of model '{model_id}': index some photos with it first")
        gallery = opened[model_id] = open_gallery(settings, dim, model_id, encoder)
    elif dim is not None and dim != gallery.dim:
        raise GalleryError(f"the store of model '{model_id}' holds {gallery.dim}-d embeddings, not {dim}-d")
    return model_id, gallery


def _stores(settings: Settings) -> ModelStores:
    return ModelStores(settings.gallery_dir, settings.gallery_lock_timeout)


def _check_not_lost(settings: Settings) -> None:
    mark = settings.home / MARK_FILE
    if settings.qdrant_url or not mark.exists() or settings.gallery_dir.exists() or settings.gallery_dir.is_symlink():
        return
    raise GalleryUnavailable(
        f"the gallery directory {settings.gallery_dir} is missing, though a gallery was made there (see {mark}): "
        f"restore it from a backup or mount its volume again; to start again with an empty gallery, delete {mark}")


def _mark(settings: Settings) -> None:
    mark = settings.home / MARK_FILE
    if not settings.qdrant_url and not mark.exists():
        mark.write_text(f"an embedded gallery was made in {settings.gallery_dir} by "
                        f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}\n")


def _adopt_top_store(settings: Settings, stores: ModelStores) -> str | None:
    """A gallery from before stores: register its top store under the model it holds; that model."""
    if stores.read()["stores"]:
        return None
    try:
        top = _open_store(settings, TOP_STORE, None)
    except NoGallery:
        return None
    with top:
        held = top.embedding_model()
        if held is not None:
            stores.claim(held, top.dim)
    return held


def _open_store(settings: Settings, store: str, dim: int | None) -> Gallery:
    if settings.qdrant_url:
        from geoloc.gallery.server import ServerGallery

        collection = QDRANT_COLLECTION if store == TOP_STORE else f"{QDRANT_COLLECTION}-{store.split('/')[-1]}"
        return ServerGallery(settings.qdrant_url, dim, api_key=settings.qdrant_api_key, collection=collection,
                             shard_number=settings.qdrant_shards, replication_factor=settings.qdrant_replication,
                             on_disk=settings.qdrant_on_disk, int8_quantization=settings.qdrant_int8,
                             timeout=settings.qdrant_timeout, tuning=settings)
    path = settings.gallery_dir / store
    if settings.edge_shared:
        from geoloc.gallery.shared import SharedEdgeGallery

        return SharedEdgeGallery(path, dim, settings.gallery_lock_timeout, tuning=settings)
    from geoloc.gallery.edge import EdgeGallery

    return EdgeGallery(path, dim, tuning=settings)
