"""A feature cache: backbone features of a labelled source, extracted once, resumable.

Training and evaluation run on these arrays (minutes on a CPU) instead of re-running the backbone.
Work is written in parts beside the output; a rerun skips the parts already written, and the final
`.npz` (no pickles) is assembled when the source is exhausted.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geoloc.ingest.records import PhotoRecord, Skipped
from geoloc.ingest.sources import iter_source

PART_SIZE = 256


@dataclass
class FeatureSet:
    features: np.ndarray  # (n, D) float32
    lat: np.ndarray
    lon: np.ndarray
    sources: np.ndarray  # str
    sha256: np.ndarray  # str
    photographers: np.ndarray  # str, "" when unknown
    model_id: str

    def __len__(self) -> int:
        return len(self.lat)

    def subset(self, mask) -> "FeatureSet":
        return FeatureSet(self.features[mask], self.lat[mask], self.lon[mask], self.sources[mask],
                          self.sha256[mask], self.photographers[mask], self.model_id)

    def save(self, path: Path) -> None:
        np.savez(path, features=self.features, lat=self.lat, lon=self.lon, sources=self.sources,
                 sha256=self.sha256, photographers=self.photographers, model_id=np.array(self.model_id))


def load_features(path: str | Path) -> FeatureSet:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no feature file (make one with: geoloc features SOURCE --out {path})")
    with np.load(path, allow_pickle=False) as data:
        return FeatureSet(data["features"], data["lat"], data["lon"], data["sources"], data["sha256"],
                          data["photographers"], str(data["model_id"]))


def _parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def extract_features(source: str | Path, out: str | Path, backbone, photographer_column: str = "photographer",
                     progress: Callable[[int], None] | None = None) -> tuple[FeatureSet, dict[str, int]]:
    """Features of every usable photo of `source` into `out` (.npz added when missing); returns them
    and the skip counts."""
    out = Path(out)
    if out.suffix != ".npz":
        out = out.with_name(out.name + ".npz")
    parts = _parts_dir(out)
    parts.mkdir(parents=True, exist_ok=True)
    meta_path = parts / "meta.json"
    if meta_path.exists() and json.loads(meta_path.read_text())["model_id"] != backbone.model_id:
        raise ValueError(f"{parts} was started with another backbone; delete it to start over")
    meta_path.write_text(json.dumps({"model_id": backbone.model_id, "source": str(source)}))
    done = sorted(parts.glob("part-*.npz"))
    skip_first = sum(int(np.load(p, allow_pickle=False)["consumed"]) for p in done)
    skipped: Counter = Counter()
    batch: list[PhotoRecord] = []
    consumed = 0

    def write_part() -> None:
        nonlocal consumed, skipped
        feats = backbone.features([r.image for r in batch]) if batch else np.zeros((0, backbone.dim), np.float32)
        np.savez(parts / f"part-{len(done):06d}.npz", features=feats, consumed=np.array(consumed),
                 lat=np.array([r.lat for r in batch]), lon=np.array([r.lon for r in batch]),
                 sources=np.array([r.source for r in batch], dtype=str),
                 sha256=np.array([r.sha256 for r in batch], dtype=str),
                 skipped=np.array(json.dumps(skipped)),
                 photographers=np.array([str(r.extra.get(photographer_column, "")) for r in batch], dtype=str))
        done.append(parts / f"part-{len(done):06d}.npz")
        batch.clear()
        consumed = 0
        skipped = Counter()

    for index, record in enumerate(iter_source(source)):
        if index < skip_first:  # resumed: this entry is already in a part
            continue
        consumed += 1
        if isinstance(record, Skipped):
            skipped[record.reason] += 1
        else:
            batch.append(record)
        if consumed >= PART_SIZE:
            write_part()
        if progress:
            progress(1)
    if consumed:
        write_part()
    loaded = [np.load(p, allow_pickle=False) for p in done]
    skipped = sum((Counter(json.loads(str(d["skipped"]))) for d in loaded), Counter())
    cat = {k: np.concatenate([d[k] for d in loaded]) for k in ("lat", "lon", "sources", "sha256", "photographers")}
    dim = backbone.dim
    features = np.concatenate([d["features"].reshape(-1, dim) for d in loaded]).astype(np.float32)
    result = FeatureSet(features, cat["lat"].astype(np.float64), cat["lon"].astype(np.float64),
                        cat["sources"], cat["sha256"], cat["photographers"], backbone.model_id)
    result.save(out)
    for p in parts.iterdir():
        p.unlink()
    parts.rmdir()
    return result, dict(skipped)
