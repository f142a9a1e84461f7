"""Server-side imports: which paths the API may read, and a folder or CSV manifest planned into the photo
items an index job reads (only once each file is read is it checked to lie inside the import roots)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from geoloc.ingest import sources
from geoloc.ingest.sources import SourceError
from geoloc.job_store import Outcome


def check_import_path(path: str | Path, roots: Iterable[Path]) -> Path:
    """The resolved path if it lies under one of the import roots; symlinks cannot lead out of them."""
    roots = list(roots)
    if not roots:
        raise PermissionError("server-side imports are off: set GEOLOC_IMPORT_ROOTS to the folders "
                              "the API may read from")
    if "\x00" in str(path):
        raise SourceError("a path with a NUL byte names no file")
    try:
        resolved = Path(path).expanduser().resolve()
        if not any(resolved.is_relative_to(root) for root in roots):
            raise PermissionError(f"{path} is not under an import root ({', '.join(map(str, roots))})")
        if not resolved.exists():
            raise SourceError(f"{path}: no such file or folder on the server")
    except (OSError, ValueError) as exc:  # a name too long for the file system, and the like
        if isinstance(exc, PermissionError):
            raise
        raise SourceError(f"cannot use this path ({exc.strerror if isinstance(exc, OSError) else exc})") from None
    return resolved


def plan_import(path: Path, roots: Iterable[Path]) -> tuple[list[dict], Outcome]:
    """A folder or CSV manifest inside `roots` -> photo items for index_batch, and the entries refused up
    front. Where the files lead is checked when they are read, not here: a symlink may change in between."""
    items, pre = [], Outcome()
    for entry in sources.list_entries(path, tuple(roots)):
        if not entry.supported:
            pre.skip(entry.source, "unsupported_type")
        else:
            items.append({"path": str(entry.path), "source": entry.source, "lat": entry.lat, "lon": entry.lon,
                          "extra": dict(entry.extra)})
    return items, pre

