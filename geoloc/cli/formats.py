"""How `geoloc locate` writes its answers for machines: one JSON document, JSON lines, CSV, or GeoJSON.

Each writer takes the answers one by one (as dicts: the photo's name, the answer's fields, and `error_km`
when the truth is known) and ends with the accuracy over the photos whose truth was known. JSON lines and
CSV stream: a row leaves as soon as its photo is answered.
"""

from __future__ import annotations

import csv
import json
import sys

from geoloc.calibration import RADII_KM
from geoloc.cli.common import print_json

FORMATS = ("table", "json", "jsonl", "csv", "geojson")
PROBABILITIES = tuple(f"p_{radius:g}km" for radius in RADII_KM)
# the main fields of an answer, flat: CSV columns and GeoJSON properties alike
COLUMNS = ("image", "lat", "lon", "place", "country", "country_code", "confidence", "abstained", "uncertainty_km",
           *PROBABILITIES, "calibration", "method", "cluster_size", "cell", "neighbours", "error_km", "same_photo")


def flat(result: dict) -> dict:
    """An answer's main fields, one value each: the place by its label, probabilities by radius, the gallery's
    copy of the very photo as collection/source, the nearest neighbours by their gallery ids (nearest first)."""
    place, cell, same = result.get("place") or {}, result.get("cell") or {}, result.get("same_photo")
    row = {key: result.get(key) for key in COLUMNS}
    row.update({"place": place.get("label"), "country": place.get("country"),
                "same_photo": f"{same['collection']}/{same['source']}" if same else None,
                "country_code": place.get("country_code"), "cell": cell.get("token"),
                "neighbours": [n["id"] for n in result.get("neighbours", [])]})
    row.update({f"p_{radius:g}km": result.get("probabilities", {}).get(f"{radius:g}") for radius in RADII_KM})
    return row


class JsonWriter:
    """One document: {"answers": [...], "accuracy": {...} or null}, every field of every answer."""

    def __init__(self):
        self.results: list[dict] = []

    def add(self, result: dict) -> None:
        self.results.append(result)

    def finish(self, accuracy: dict | None) -> None:
        print_json({"answers": self.results, "accuracy": accuracy})


class JsonLinesWriter:
    """One answer per line, every field; the accuracy is not an answer: it goes to stderr."""

    def add(self, result: dict) -> None:
        print(json.dumps(result), flush=True)

    def finish(self, accuracy: dict | None) -> None:
        if accuracy:
            print(f"accuracy: {json.dumps(accuracy)}", file=sys.stderr)


class CsvWriter:
    """A header, then one row per photo with the main fields (neighbours' ids joined by spaces)."""

    def __init__(self):
        self.writer = csv.DictWriter(sys.stdout, fieldnames=COLUMNS, lineterminator="\n")
        self.writer.writeheader()

    def add(self, result: dict) -> None:
        row = flat(result)
        self.writer.writerow({**row, "neighbours": " ".join(row["neighbours"])})
        sys.stdout.flush()

    def finish(self, accuracy: dict | None) -> None:
        JsonLinesWriter().finish(accuracy)


class GeoJsonWriter:
    """A FeatureCollection (RFC 7946): each answer a Point [lon, lat] whose properties are its main fields,
    the accuracy as a foreign member beside the features."""

    def __init__(self):
        self.features: list[dict] = []

    def add(self, result: dict) -> None:
        self.features.append({"type": "Feature", "geometry": {"type": "Point", "coordinates": [result["lon"],
                                                                                               result["lat"]]},
                              "properties": flat(result)})

    def finish(self, accuracy: dict | None) -> None:
        collection = {"type": "FeatureCollection", "features": self.features}
        print_json({**collection, "accuracy": accuracy} if accuracy else collection)


WRITERS = {"json": JsonWriter, "jsonl": JsonLinesWriter, "csv": CsvWriter, "geojson": GeoJsonWriter}
