"""Photo sources: a folder of photos with EXIF GPS, or a CSV manifest `filename,lat,lon[,more]`.

Each yields PhotoRecord or Skipped, in a stable order, decoding on a small thread pool (Pillow releases
the GIL while decoding). Nothing a single file does can stop or block the iteration: every file is read
through ingest.files (regular files only, bounded, inside the import roots when the policy names them).
"""

from __future__ import annotations

import csv
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from geoloc.ingest.coordinates import GpsError, validate_coordinates
from geoloc.ingest.credit import clean_credit, photographer_from_exif
from geoloc.ingest.exif_gps import gps_from_exif
from geoloc.ingest.files import FileSkip, ReadPolicy, open_regular, read_bounded
from geoloc.ingest.images import DEFAULT_MAX_PIXELS, SUPPORTED_SUFFIXES, ImageError, open_image, to_rgb
from geoloc.ingest.originals import OriginalStore
from geoloc.ingest.records import ORIGINAL, PHOTOGRAPHER, PhotoRecord, Skipped, sha256_hex

REQUIRED_COLUMNS = ("filename", "lat", "lon")
MAX_LINE_BYTES = 1 << 20  # a manifest line longer than this is not a manifest


class SourceError(ValueError):
    """The source as a whole cannot be read (missing path, CSV without the needed columns)."""


@dataclass(frozen=True)
class SourceEntry:
    """One photo a source lists, before it is read."""

    source: str  # its name inside the collection, never an absolute path
    path: Path
    lat: str | None = None  # from a manifest; None means "read EXIF"
    lon: str | None = None
    extra: tuple = ()

    @property
    def supported(self) -> bool:
        return self.path.suffix.lower() in SUPPORTED_SUFFIXES


def load_photo(source: str, data: bytes, lat=None, lon=None, extra: dict | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS, store: OriginalStore | None = None) -> PhotoRecord | Skipped:
    """Bytes -> a record, taking coordinates as given or, when none are given, from EXIF. With a store, a
    usable photo's bytes are kept in it and the payload names the copy."""
    try:
        image = open_image(data, max_pixels)
        if lat is None or lon is None or (str(lat).strip() == "" and str(lon).strip() == ""):
            lat, lon = gps_from_exif(image)
        else:
            lat, lon = validate_coordinates(lat, lon)
        rgb = to_rgb(image)
    except (ImageError, GpsError) as exc:
        return Skipped(source, str(exc))
    extra = dict(extra or {})
    credit = clean_credit(extra.pop(PHOTOGRAPHER, None)) or photographer_from_exif(image)
    if credit:
        extra[PHOTOGRAPHER] = credit
    if store is None:
        digest = sha256_hex(data)
    else:
        digest, _ = store.put(data, rgb)
        extra[ORIGINAL] = store.name(digest)
    return PhotoRecord(source, lat, lon, digest, rgb, extra)


def read_photo_file(source: str, path: str | Path, lat=None, lon=None, extra: dict | None = None,
                    policy: ReadPolicy = ReadPolicy(), store: OriginalStore | None = None) -> PhotoRecord | Skipped:
    """A photo on disk -> a record, reading only what `policy` allows (see ingest.files)."""
    try:
        data = read_bounded(path, policy)
    except FileSkip as exc:
        return Skipped(source, str(exc))
    return load_photo(source, data, lat, lon, extra, policy.max_pixels, store)


def load_entry(item: SourceEntry, policy: ReadPolicy = ReadPolicy(),
               store: OriginalStore | None = None) -> PhotoRecord | Skipped:
    if not item.supported:
        return Skipped(item.source, "unsupported_type")
    return read_photo_file(item.source, item.path, item.lat, item.lon, dict(item.extra), policy, store)


def _walk(folder: Path) -> Iterator[Path]:
    """Every entry under the folder but folders, in name order. Symlinked folders are not entered (no loops,
    no way out); anything else, even a FIFO or a symlink, is listed, so that reading it gives a reason."""
    with os.scandir(folder) as scan:
        entries = sorted(scan, key=lambda e: e.name)
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path))
        elif not entry.name.startswith("."):
            yield Path(entry.path)


def _folder_items(root: Path) -> Iterator[SourceEntry]:
    for path in _walk(root):
        yield SourceEntry(str(path.relative_to(root)), path)


def resolve_manifest_path(csv_path: Path, name: str) -> Path:
    """A manifest's filename: absolute, or relative to the manifest's folder or its `images/` folder."""
    path = Path(name)
    if path.is_absolute():
        return path
    beside = csv_path.parent / path
    in_images = csv_path.parent / "images" / path
    return in_images if not _exists(beside) and _exists(in_images) else beside


def _exists(path: Path) -> bool:
    """Path.exists, but False for a name too long for the file system (ENAMETOOLONG, which Path.exists
    raises): one such manifest row must not stop the listing; reading it gives its reason."""
    try:
        return path.exists()
    except OSError:
        return False


def entry_name(csv_path: Path, name: str) -> str:
    """A manifest row's photo name in the collection: as written when relative; an absolute one relative to
    the manifest's folder when under it, else its bare file name (no server path reaches a payload)."""
    path = Path(name)
    if not path.is_absolute():
        return name
    folder = Path(os.path.abspath(csv_path.parent))
    return str(path.relative_to(folder)) if path.is_relative_to(folder) else path.name


def _lines(handle: BinaryIO, csv_path: Path) -> Iterator[str]:
    """The manifest's lines, each decoded on its own, so that an error names its line."""
    number = 0
    while raw := handle.readline(MAX_LINE_BYTES + 1):
        number += 1
        if len(raw) > MAX_LINE_BYTES:
            raise SourceError(f"{csv_path}, line {number}: longer than {MAX_LINE_BYTES} bytes; not a CSV manifest")
        try:
            yield raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise SourceError(f"{csv_path}, line {number}: not UTF-8 text (byte {exc.start + 1} of the line); "
                              f"save the manifest as UTF-8") from None


def _rows(csv_path: Path, roots: tuple[Path, ...] | None) -> Iterator[tuple[int, dict]]:
    """(line number, row) of a manifest, opened like a photo (a regular file, inside `roots` when given)."""
    try:
        handle = open_regular(csv_path, roots)
    except FileSkip as exc:
        raise SourceError(f"{csv_path}: the manifest cannot be read ({exc})") from None
    with handle:
        reader = csv.DictReader(_lines(handle, csv_path))
        try:
            columns = [c.strip() for c in (reader.fieldnames or [])]
            missing = [c for c in REQUIRED_COLUMNS if c not in columns]
            if missing:
                raise SourceError(f"{csv_path}: manifest lacks column(s) {', '.join(missing)}; "
                                  f"expected a header like filename,lat,lon[,more columns]")
            reader.fieldnames = columns
            for row in reader:
                yield reader.line_num, row
        except csv.Error as exc:
            raise SourceError(f"{csv_path}, line {reader.line_num}: {exc}") from None


def _manifest_items(csv_path: Path, roots: tuple[Path, ...] | None) -> Iterator[SourceEntry]:
    for line, row in _rows(csv_path, roots):
        name = (row.get("filename") or "").strip()
        extra = tuple((k, v) for k, v in row.items() if k not in REQUIRED_COLUMNS and k)
        yield SourceEntry(entry_name(csv_path, name) if name else f"row {line}",
                          resolve_manifest_path(csv_path, name), row.get("lat") or "", row.get("lon") or "", extra)


def list_entries(path: Path, roots: tuple[Path, ...] | None = None) -> Iterator[SourceEntry]:
    """The entries of a folder (recursive), a CSV manifest or a single photo, in a stable order; a manifest
    is read only if it lies inside `roots` (resolved folders) when given."""
    if not path.exists():
        raise SourceError(f"{path}: no such file or folder")
    if path.is_dir():
        return _folder_items(path)
    if path.suffix.lower() == ".csv":
        return _manifest_items(path, roots)
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


def iter_source(path: str | Path, workers: int = 2, policy: ReadPolicy = ReadPolicy(),
                store: OriginalStore | None = None) -> Iterator[PhotoRecord | Skipped]:
    """Records and skips of a folder (recursive), a CSV manifest or a single photo, in a stable order; with a
    store, every usable photo's bytes are kept in it."""
    items = list_entries(Path(path), policy.roots)
    return _ordered_map(lambda item: load_entry(item, policy, store), items, workers, window=4 * workers + 8)
