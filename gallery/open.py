"""Open the gallery the settings point at: a Qdrant server when GEOLOC_QDRANT_URL is set, else Edge on disk
(opened per operation when processes share it: GEOLOC_GALLERY_SHARED, or workers without a server)."""

from __future__ import annotations

from geoloc.gallery.base import Gallery
from geoloc.settings import Settings


def open_gallery(settings: Settings, dim: int | None = None) -> Gallery:
    """`dim=None` opens an existing gallery whatever its dimension; creating one needs it."""
    if settings.qdrant_url:
        from geoloc.gallery.server import ServerGallery

        return ServerGallery(settings.qdrant_url, dim, api_key=settings.qdrant_api_key,
                             shard_number=settings.qdrant_shards, replication_factor=settings.qdrant_replication,
                             on_disk=settings.qdrant_on_disk, int8_quantization=settings.qdrant_int8,
                             timeout=settings.qdrant_timeout)
    if settings.edge_shared:
        from geoloc.gallery.shared import SharedEdgeGallery

        return SharedEdgeGallery(settings.gallery_dir, dim)
    from geoloc.gallery.edge import EdgeGallery

    return EdgeGallery(settings.gallery_dir, dim)
