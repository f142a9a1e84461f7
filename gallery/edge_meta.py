"""gallery.json, the description an embedded gallery keeps beside its shard: the embeddings' dimension, the
full-scan threshold its store was made with (gallery.base.FULL_SCAN_KB), and the search breadth its last index
build measured (gallery.search_breadth). Read and written inside the gallery's disk_faults."""

from __future__ import annotations

import json
import os
from pathlib import Path

from geoloc.gallery.faults import GalleryUnavailable

META_FILE = "gallery.json"


def read_meta(path: Path) -> dict | None:
    """The description of the gallery at `path`; None when it has none."""
    meta = path / META_FILE
    if not (meta.exists() or meta.is_symlink()):
        return None
    if not meta.is_file():  # a FIFO here would block a plain read for ever
        raise GalleryUnavailable(f"{meta} is not a regular file: restore the gallery's {META_FILE}")
    try:
        data = json.loads(meta.read_text())
        int(data["dim"])
    except (ValueError, KeyError, TypeError) as exc:
        raise GalleryUnavailable(f"{meta} is damaged ({exc}): restore it from a backup") from None
    return data


def write_meta(path: Path, data: dict) -> None:
    """Replace the description whole: a crash leaves the old one or the new one, never half of either."""
    meta = path / META_FILE
    staging = meta.with_suffix(".tmp")
    staging.write_text(json.dumps(data))
    os.replace(staging, meta)
