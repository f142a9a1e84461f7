"""gallery.json, the description an embedded gallery keeps beside its shard: the embeddings' dimension, the
full-scan threshold its store was made with (gallery.base.FULL_SCAN_KB), and the search breadth its last index
build measured (gallery.search_breadth). Read and written inside the gallery's disk_faults. Also the store's
layout, for listings: what those say and what its shard's own config says about its vectors and graph."""

from __future__ import annotations

import json
import os
from pathlib import Path

from geoloc.gallery.faults import GalleryUnavailable

META_FILE = "gallery.json"
SHARD_DIR = "shard"


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


def read_layout(path: Path) -> dict | None:
    """How the embedded store at `path` keeps and searches its vectors: `vectors`, what it holds in RAM
    (float32, or the quantized copies it searches first: int8, turbo4); the graph it builds (`m`, `ef_construct`;
    None: the engine's defaults); and `search`, the breadth its last index build measured. None when there is
    no such store (a Qdrant server's) or its files cannot be read: a listing then shows no layout."""
    config_file = path / SHARD_DIR / "edge_config.json"
    try:
        if not config_file.is_file():  # a FIFO here would block a plain read for ever
            return None
        config = json.loads(config_file.read_text())
        quantized = config.get("quantization_config") or {}
        graph = config.get("hnsw_config") or {}  # stores made before it was set: the engine's defaults
        kind = next(iter(quantized), None)
        bits = str((quantized.get(kind) or {}).get("bits", "")).removeprefix("bits")
        search = (read_meta(path) or {}).get("search")
        return {"vectors": {None: "float32", "scalar": "int8", "turbo": f"turbo{bits}"}.get(kind, kind),
                "m": graph.get("m"), "ef_construct": graph.get("ef_construct"), "search": search}
    except (OSError, ValueError, AttributeError, GalleryUnavailable):
        return None
