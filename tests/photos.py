"""Synthetic photos with chosen EXIF GPS blocks, for ingest tests."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import ExifTags, Image

FORMATS = {".jpg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".tif": "TIFF"}


def dms(value: float) -> tuple[float, float, float]:
    total_seconds = round(abs(value) * 3600, 4)
    minutes, seconds = divmod(total_seconds, 60)
    degrees, minutes = divmod(minutes, 60)
    return float(degrees), float(minutes), round(seconds, 4)


def gps_block(lat: float, lon: float) -> dict:
    return {1: "N" if lat >= 0 else "S", 2: dms(lat), 3: "E" if lon >= 0 else "W", 4: dms(lon)}


def photo_bytes(gps: dict | None = None, suffix: str = ".jpg", colour=(120, 80, 40), size=(48, 32)) -> bytes:
    image = Image.new("RGB", size, colour)
    buffer = io.BytesIO()
    if gps is None:
        image.save(buffer, FORMATS[suffix])
    else:
        exif = Image.Exif()
        exif[ExifTags.IFD.GPSInfo] = gps
        image.save(buffer, FORMATS[suffix], exif=exif.tobytes())
    return buffer.getvalue()


def write_photo(path: Path, lat: float | None = None, lon: float | None = None, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    gps = gps_block(lat, lon) if lat is not None else kwargs.pop("gps", None)
    path.write_bytes(photo_bytes(gps, suffix=path.suffix.lower(), **kwargs))
    return path
