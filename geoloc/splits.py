"""Split a labelled manifest by a grouping column (photographer), never by photo."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from geoloc.evaluation import photographer_folds
from geoloc.ingest.sources import resolve_manifest_path


def split_manifest(manifest: Path, out: Path, by: str = "photographer", query_fraction: float = 0.2,
                   seed: int = 0) -> tuple[Path, Path, dict]:
    """Write gallery.csv and queries.csv (absolute filenames) with no `by` value on both sides."""
    if not 0 < query_fraction < 1:
        raise ValueError("--query-fraction must lie strictly between 0 and 1")
    with manifest.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        rows, fields = list(reader), list(reader.fieldnames or [])
    if by not in fields:
        raise ValueError(f"{manifest}: no column '{by}' to split by (columns: {', '.join(fields)})")
    folds = photographer_folds([r[by] for r in rows], k=max(2, round(1 / query_fraction)), seed=seed)
    for row in rows:
        row["filename"] = str(resolve_manifest_path(manifest, row["filename"]).resolve())
    out.mkdir(parents=True, exist_ok=True)
    paths = {"gallery": out / "gallery.csv", "queries": out / "queries.csv"}
    counts = {}
    for part, mask in (("gallery", folds != 0), ("queries", folds == 0)):
        with paths[part].open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(r for r, keep in zip(rows, mask) if keep)
        counts[part] = int(np.sum(mask))
    return paths["gallery"], paths["queries"], counts
