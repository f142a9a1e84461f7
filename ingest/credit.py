"""Who took a photo: a manifest's `photographer` column, else the EXIF Artist tag cameras and newsroom tools
fill with the photographer's name; cleaned so one person is one name wherever it came from."""

from __future__ import annotations

import unicodedata

from PIL import Image

_ARTIST = 0x013B
MAX_LENGTH = 200


def clean_credit(value) -> str | None:
    """A name with control characters dropped and white space collapsed, at most MAX_LENGTH characters;
    None when nothing is left or it is not text."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    kept = "".join(" " if ch.isspace() else ch for ch in value if ch.isspace() or unicodedata.category(ch)[0] != "C")
    return " ".join(kept.split())[:MAX_LENGTH] or None


def photographer_from_exif(image: Image.Image) -> str | None:
    """The Artist tag, cleaned. Pillow reads EXIF text as Latin-1, while most writers store UTF-8: text that
    reads as UTF-8 once re-encoded is taken as such ('José', not 'JosÃ©')."""
    try:
        value = image.getexif().get(_ARTIST)
    except Exception:  # a damaged EXIF block costs the credit, never the photo
        return None
    if isinstance(value, str):
        try:
            value = value.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            pass
    return clean_credit(value)
