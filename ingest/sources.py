"""Photo sources: a folder of photos with EXIF GPS, or a CSV manifest `filename,lat,lon[,more]`.

Each yields PhotoRecord or Skipped, in a stable order, decoding on a small thread pool (Pillow releases
the GIL while decoding). Nothing a single file does can stop the iteration.
"""

from __future__ import annotations

import csv
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from geoloc.ingest.exif_gps import GpsError, gps_from_exif, validate_coordinates
from geoloc.ingest.images import DEFAULT_MAX_PIXELS, SUPPORTED_SUFFIXES, ImageError, open_image, to_rgb
from geoloc.ingest.records import ORIGINAL, PhotoRecord, Skipped, sha256_hex

REQUIRED_COLUMNS = ("filename", "lat", "lon")


class SourceError(ValueError):
    """The source as a whole cannot be read (missing path, CSV without the needed columns)."""


@dataclass(frozen=True)
class SourceEntry:
    """One photo a source lists, before it is read."""

    source: str
    path: Path
    lat: str | None = None  # from a manifest; None means "read EXIF"
    lon: str | None = None
    extra: tuple = ()

    @property
    def supported(self) -> bool:
        return self.path.suffix.lower() in SUPPORTED_SUFFIXES


def load_photo(source: str, data: bytes, lat=None, lon=None, extra: dict | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> PhotoRecord | Skipped:
    """Bytes -> a record, taking coordinates as given or, when none are given, from EXIF."""
    try:
        image = open_image(data, max_pixels)
        if lat is None or lon is None or (str(lat).strip() == "" and str(lon).strip() == ""):
            lat, lon = gps_from_exif(image)
        else:
            lat, lon = validate_coordinates(lat, lon)
        rgb = to_rgb(image)
    except (ImageError, GpsError) as exc:
        return Skipped(source, str(exc))
    return PhotoRecord(source, lat, lon, sha256_hex(data), rgb, dict(extra or {}))


def read_photo_file(source: str, path: Path, lat=None, lon=None, extra: dict | None = None,
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> PhotoRecord | Skipped:
    """A photo on disk -> a record whose payload remembers the original's path (so a later bundle
    can re-embed it, or the classifier prune it)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return Skipped(source, "missing_file")
    except OSError:
        return Skipped(source, "unreadable_file")
    extra = {**(extra or {}), ORIGINAL: str(Path(path).resolve())}
    return load_photo(source, data, lat, lon, extra, max_pixels)


def load_entry(item: SourceEntry, max_pixels: int = DEFAULT_MAX_PIXELS) -> PhotoRecord | Skipped:
    if not item.supported:
        return Skipped(item.source, "unsupported_type")
    return read_photo_file(item.source, item.path, item.lat, item.lon, dict(item.extra), max_pixels)


def _folder_items(root: Path) -> Iterator[SourceEntry]:
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        yield SourceEntry(str(path.relative_to(root)), path)


def resolve_manifest_path(csv_path: Path, name: str) -> Path:
    """A manifest's filename: absolute, or relative to the manifest's folder or its `images/` folder."""
    path = Path(name)
    if path.is_absolute():
        return path
    beside = csv_path.parent / path
    in_images = csv_path.parent / "images" / path
    return in_images if not beside.exists() and in_images.exists() else beside


def _manifest_items(csv_path: Path) -> Iterator[SourceEntry]:
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise SourceError(f"{csv_path}: manifest lacks column(s) {', '.join(missing)}; "
                              f"expected a header like filename,lat,lon[,more columns]")
        reader.fieldnames = columns
        for row in reader:
            name = (row.get("filename") or "").strip()
            extra = tuple((k, v) for k, v in row.items() if k not in REQUIRED_COLUMNS and k)
            path = resolve_manifest_path(csv_path, name)
            yield SourceEntry(name or f"row {reader.line_num}", path,
                        row.get("lat") or "", row.get("lon") or "", extra)


def list_entries(path: Path) -> Iterator[SourceEntry]:
    """The entries of a folder (recursive), a CSV manifest or a single photo, in a stable order."""
    if not path.exists():
        raise SourceError(f"{path}: no such file or folder")
    if path.is_dir():
        return _folder_items(path)
    if path.suffix.lower() == ".csv":
        return _manifest_items(path)
    return iter([SourceEntry(path.name, path)])


def _ordered_map(fn: Callable, items: Iterable, workers: int, window: int) -> Iterator:
    """executor.map with a bounded look-ahead, so a huge folder is never decoded into memory at once."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def count_items(path: Path) -> int:
    """How many entries the source lists (for a progress bar's total)."""
    return sum(1 for _ in list_entries(Path(path)))


def iter_source(path: str | Path, workers: int = 2, max_pixels: int = DEFAULT_MAX_PIXELS
                ) -> Iterator[PhotoRecord | Skipped]:
    """Records and skips of a folder (recursive), a CSV manifest or a single photo, in a stable order."""
    items = list_entries(Path(path))
    return _ordered_map(lambda item: load_entry(item, max_pixels), items, workers, window=4 * workers + 8)
