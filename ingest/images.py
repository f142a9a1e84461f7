"""Safe image decoding: only the photo formats we support, bounded pixels, EXIF orientation applied, always
RGB, never an exception leaks."""

from __future__ import annotations

import io

from PIL import Image, ImageOps
from pillow_heif import register_heif_opener

SUPPORTED_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".heic", ".heif"}
# Pillow guesses the format from the bytes, not the name: only these decoders may run (JPEG's covers the
# MPO files many phones write; HEIF, through pillow-heif, the HEIC photos of iPhones). A ".jpg" holding
# PostScript would otherwise reach Ghostscript.
DECODERS = ("JPEG", "PNG", "WEBP", "TIFF", "HEIF")
register_heif_opener(thumbnails=False, depth_images=False)  # the primary image only, never its thumbnails or depth maps
Image.init()  # registers every plugin now: Image.open(formats=...) fails on a format not yet registered
DEFAULT_MAX_PIXELS = 50_000_000
# longer side over this many times the shorter: a sliver, not a photo, that the model's resize (shorter side
# to ~256 pixels) would blow up to gigapixels (1 x 40,000: minutes and gigabytes)
MAX_ASPECT_RATIO = 50


class ImageError(ValueError):
    """The bytes are not a usable photo; the message is the skip reason."""


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int | None = None) -> Image.Image:
    """Decode fully (so truncation is caught here, not in the model), refusing decompression bombs (more
    than `max_pixels`, or what Pillow itself calls a bomb) and slivers before any pixel is decoded."""
    try:
        image = Image.open(io.BytesIO(data), formats=DECODERS)
        width, height = image.size
        if width * height > max_pixels:
            raise ImageError("too_many_pixels")
        if max(width, height) > MAX_ASPECT_RATIO * max(1, min(width, height)):
            raise ImageError("extreme_aspect_ratio")
        if min_side:  # JPEG only: decode at 1/2, 1/4 or 1/8 scale while both sides stay >= min_side, far cheaper
            image.draft(None, (min_side, min_side))
        image.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # the warning, when made an error
        raise ImageError("too_many_pixels") from exc
    except Exception as exc:  # Pillow raises many types for corrupt data
        raise ImageError("undecodable_image") from exc
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Upright RGB, with EXIF orientation applied."""
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a broken orientation tag must not lose the photo
        pass
    return image if image.mode == "RGB" else image.convert("RGB")  # converting to its own mode only copies
