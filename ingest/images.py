"""Safe image decoding: bounded pixels, EXIF orientation applied, always RGB, never an exception leaks."""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps

SUPPORTED_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff"}
DEFAULT_MAX_PIXELS = 50_000_000


class ImageError(ValueError):
    """The bytes are not a usable photo; the message is the skip reason."""


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode fully (so truncation is caught here, not in the model), refusing decompression bombs."""
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            raise ImageError("too_many_pixels")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
    except ImageError:
        raise
    except Exception as exc:  # Pillow raises many types for corrupt data
        raise ImageError("undecodable_image") from exc
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Upright RGB, with EXIF orientation applied."""
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a broken orientation tag must not lose the photo
        pass
    return image.convert("RGB")
