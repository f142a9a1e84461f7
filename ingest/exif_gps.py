"""GPS coordinates from EXIF: strict about what makes a position (degrees, reference letters), tolerant only
of what real cameras write (0/0 for minutes or seconds they did not measure, no reference at all)."""

from __future__ import annotations

import math

from PIL import ExifTags, Image

from geoloc.ingest.coordinates import GpsError, validate_coordinates

_GPS_LAT_REF, _GPS_LAT, _GPS_LON_REF, _GPS_LON = 1, 2, 3, 4
_LAT_REFS, _LON_REFS = {"N": 1, "S": -1}, {"E": 1, "W": -1}


def _rational(value, undefined_is_zero: bool) -> float:
    """An EXIF rational (IFDRational, (num, den) tuple or number); x/0 is invalid, and so is 0/0 unless
    `undefined_is_zero` (minutes and seconds: some cameras write 0/0 for "not measured")."""
    if isinstance(value, tuple) and len(value) == 2:
        num, den = value
    else:
        num = getattr(value, "numerator", value)
        den = getattr(value, "denominator", 1)
    num, den = float(num), float(den)
    if den == 0:
        if num == 0 and undefined_is_zero:
            return 0.0
        raise GpsError("invalid_gps")
    result = num / den
    if not math.isfinite(result):
        raise GpsError("invalid_gps")
    return result


def _reference(ref, letters: dict[str, int]) -> int | None:
    """+1 or -1 from the reference letter, None when none is written; any other letter is invalid."""
    if ref is None:
        return None
    if isinstance(ref, bytes):
        ref = ref.decode("ascii", "replace")
    if not isinstance(ref, str):
        raise GpsError("invalid_gps")
    letter = ref.strip("\x00 ").upper()
    if not letter:
        return None
    if letter not in letters:
        raise GpsError("invalid_gps")
    return letters[letter]


def _degrees(dms, ref, letters: dict[str, int]) -> float:
    if isinstance(dms, (int, float)) or not hasattr(dms, "__len__"):
        parts = [dms]
    else:
        parts = list(dms)
    if not 1 <= len(parts) <= 3:
        raise GpsError("invalid_gps")
    deg = _rational(parts[0], undefined_is_zero=False)
    minutes, seconds = [_rational(p, undefined_is_zero=True) for p in parts[1:]] + [0.0] * (3 - len(parts))
    if not (0 <= minutes <= 60 and 0 <= seconds <= 60):  # 60 itself appears through writers' rounding
        raise GpsError("invalid_gps")
    total = abs(deg) + minutes / 60 + seconds / 3600
    sign = _reference(ref, letters)
    if sign is None:
        return -total if deg < 0 else total  # some writers sign the degrees and omit the reference
    if deg < 0 and sign > 0:  # signed south or west, yet labelled north or east
        raise GpsError("invalid_gps")
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
        lat = _degrees(gps[_GPS_LAT], gps.get(_GPS_LAT_REF), _LAT_REFS)
        lon = _degrees(gps[_GPS_LON], gps.get(_GPS_LON_REF), _LON_REFS)
    except GpsError:
        raise
    except (TypeError, ValueError, ZeroDivisionError, OverflowError) as exc:
        raise GpsError("invalid_gps") from exc
    return validate_coordinates(lat, lon)
