"""Open the gallery the settings point at: a Qdrant server when GEOLOC_QDRANT_URL is set, else Edge on disk
(opened per operation when processes share it: GEOLOC_GALLERY_SHARED, or workers without a server); and in
it, the store of one embedding model (gallery.stores)."""

from __future__ import annotations

from geoloc.gallery.base import QDRANT_COLLECTION, Gallery, NoGallery
from geoloc.gallery.stores import TOP_STORE, ModelStores
from geoloc.settings import Settings


def open_gallery(settings: Settings, dim: int | None = None, model_id: str | None = None,
                 encoder: dict | None = None) -> Gallery:
    """The store of `model_id` (registered on first use, with the `encoder` settings that made it), or the
    one serving queries when no model is named. `dim=None` opens an existing store whatever its dimension;
    creating one needs it."""
    stores = ModelStores(settings.gallery_dir)
    if model_id is None:
        serving = stores.serving()
        store = TOP_STORE if serving is None else stores.store_of(serving)
    else:
        top_model = None if stores.store_of(model_id) else _adopt_top_store(settings, stores)
        store = stores.claim(model_id, dim, encoder, top_model)
    return _open_store(settings, store, dim)


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
                             timeout=settings.qdrant_timeout)
    path = settings.gallery_dir / store
    if settings.edge_shared:
        from geoloc.gallery.shared import SharedEdgeGallery

        return SharedEdgeGallery(path, dim)
    from geoloc.gallery.edge import EdgeGallery

    return EdgeGallery(path, dim)
