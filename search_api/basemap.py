"""Country outlines for the page's map when no tile server can be reached.

The outlines are the GeoJSON the `countryinfo` package ships for each country (Natural Earth, about 1:110m),
joined once into one FeatureCollection: a world map that needs no network.
"""

from __future__ import annotations

import json
from functools import cache

from countryinfo import all_countries


@cache
def countries_geojson() -> bytes:
    """Every country's outline as one GeoJSON FeatureCollection (about 250 kB), built on first use."""
    features = [feature for country in all_countries() for feature in country.geo_json().get("features", [])]
    return json.dumps({"type": "FeatureCollection", "features": features}, separators=(",", ":")).encode()
