"""Small previews of stored photos, for pages that show many at once: upright, longest side 256 px, JPEG.

Made from the photo ingest has just decoded, or, for a copy stored before thumbnails existed, from its bytes by
the same decoder ingest uses (ingest.images, at a reduced JPEG scale). JPEG rather than WebP: about 20% larger,
but encoded several times faster, and every photo stored makes one.
"""

from __future__ import annotations

import io

from PIL import Image

from geoloc.ingest.images import DEFAULT_MAX_PIXELS, ImageError, open_image, to_rgb

SIZE = 256  # longest side, px
MEDIA_TYPE = "image/jpeg"
SUFFIX = "thumb.jpg"  # a thumbnail lives beside its original as <digest>.thumb.jpg
QUALITY = 80


def make_thumbnail(rgb: Image.Image) -> bytes:
    """The thumbnail of an upright RGB photo (ingest.images.to_rgb), as JPEG bytes."""
    image = rgb.copy()
    image.thumbnail((SIZE, SIZE))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=QUALITY)
    return out.getvalue()


def thumbnail_of_bytes(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes | None:
    """The thumbnail of a photo's bytes, or None when they are no photo geoloc would decode."""
    try:
        return make_thumbnail(to_rgb(open_image(data, max_pixels, min_side=2 * SIZE)))
    except ImageError:
        return None
