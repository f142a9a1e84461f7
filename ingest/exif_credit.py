"""Who took a photo, from EXIF: the Artist tag cameras and newsroom tools fill with the photographer's name."""

from __future__ import annotations

from PIL import Image

_ARTIST = 0x013B
MAX_LENGTH = 200


def photographer_from_exif(image: Image.Image) -> str | None:
    """The Artist tag, trimmed, or None when it is absent, empty or not text."""
    try:
        value = image.getexif().get(_ARTIST)
    except Exception:  # a damaged EXIF block costs the credit, never the photo
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    value = value.replace("\x00", "").strip()
    return value[:MAX_LENGTH] or None
