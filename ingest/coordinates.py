"""Coordinates as people and files write them: one strict parser for every entry point (CSV, form fields,
EXIF), so a value is either a plain decimal number in range or refused with a reason."""

from __future__ import annotations

import math
import re

# ASCII digits only (no `1_0`, no other scripts' digits), no exponent, no inf or nan
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


class GpsError(ValueError):
    """The photo carries no usable position; the message is the skip reason."""


def parse_decimal(value) -> float:
    """A finite number from a plain decimal string (surrounding spaces allowed) or a number."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str) and _DECIMAL.fullmatch(value.strip(" \t")):
        number = float(value.strip(" \t"))
    else:
        raise GpsError("invalid_coordinates")
    if not math.isfinite(number):
        raise GpsError("invalid_coordinates")
    return number


def validate_coordinates(lat, lon) -> tuple[float, float]:
    """Plain decimals in range, and not the (0, 0) that GPS units write when they have no fix."""
    lat, lon = parse_decimal(lat), parse_decimal(lon)
    if abs(lat) > 90 or abs(lon) > 180:
        raise GpsError("invalid_coordinates")
    if lat == 0 and lon == 0:
        raise GpsError("null_island")
    return lat, lon
