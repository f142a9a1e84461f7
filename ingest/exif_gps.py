"""GPS coordinates from EXIF, defensive about what real cameras and editors write."""

from __future__ import annotations

import math

from PIL import ExifTags, Image

_GPS_LAT_REF, _GPS_LAT, _GPS_LON_REF, _GPS_LON = 1, 2, 3, 4


class GpsError(ValueError):
    """The photo carries no usable GPS position; the message is the skip reason."""


def _rational(value) -> float:
    """An EXIF rational (IFDRational, (num, den) tuple or number); 0/0 reads as 0, x/0 is invalid."""
    if isinstance(value, tuple) and len(value) == 2:
        num, den = value
    else:
        num = getattr(value, "numerator", value)
        den = getattr(value, "denominator", 1)
    num, den = float(num), float(den)
    if den == 0:
        if num == 0:
            return 0.0
        raise GpsError("invalid_gps")
    result = num / den
    if not math.isfinite(result):
        raise GpsError("invalid_gps")
    return result


def _degrees(dms, ref, negative_ref: str) -> float:
    if isinstance(dms, (int, float)) or not hasattr(dms, "__len__"):
        parts = [dms]
    else:
        parts = list(dms)
    if not 1 <= len(parts) <= 3:
        raise GpsError("invalid_gps")
    values = [_rational(p) for p in parts] + [0.0] * (3 - len(parts))
    deg, minutes, seconds = values
    if not (0 <= minutes <= 60 and 0 <= seconds <= 60):  # 60 itself appears through writers' rounding
        raise GpsError("invalid_gps")
    total = abs(deg) + minutes / 60 + seconds / 3600
    sign = -1 if deg < 0 else 1  # some writers sign the degrees and omit the reference
    if isinstance(ref, bytes):
        ref = ref.decode("ascii", "ignore")
    if isinstance(ref, str) and ref.strip("\x00 ").upper() == negative_ref:
        sign = -1
    return sign * total


def gps_from_exif(image: Image.Image) -> tuple[float, float]:
    """(lat, lon) in degrees from the photo's GPS IFD; raises GpsError with the skip reason."""
    try:
        gps = image.getexif().get_ifd(ExifTags.IFD.GPSInfo)
    except Exception as exc:  # malformed EXIF block
        raise GpsError("invalid_exif") from exc
    if not gps or _GPS_LAT not in gps or _GPS_LON not in gps:
        raise GpsError("no_gps")
    try:
        lat = _degrees(gps[_GPS_LAT], gps.get(_GPS_LAT_REF), "S")
        lon = _degrees(gps[_GPS_LON], gps.get(_GPS_LON_REF), "W")
    except GpsError:
        raise
    except (TypeError, ValueError, ZeroDivisionError) as exc:
        raise GpsError("invalid_gps") from exc
    return validate_coordinates(lat, lon)


def validate_coordinates(lat, lon) -> tuple[float, float]:
    """Finite, in range, and not the (0, 0) that GPS units write when they have no fix."""
    try:
        lat, lon = float(lat), float(lon)
    except (TypeError, ValueError) as exc:
        raise GpsError("invalid_coordinates") from exc
    if not (math.isfinite(lat) and math.isfinite(lon)) or abs(lat) > 90 or abs(lon) > 180:
        raise GpsError("invalid_coordinates")
    if lat == 0 and lon == 0:
        raise GpsError("null_island")
    return lat, lon
