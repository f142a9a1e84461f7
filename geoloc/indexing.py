"""Records -> embeddings -> gallery upserts, with a report of everything skipped and why."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from geoloc.gallery.base import Gallery, GalleryPoint, make_payload
from geoloc.embedding import Embedder
from geoloc.names import check_collection_name
from geoloc.ingest.files import ReadPolicy
from geoloc.ingest.originals import OriginalStore
from geoloc.ingest.records import PhotoRecord, Skipped, point_id
from geoloc.ingest.sources import iter_source
from geoloc.settings import Settings

@dataclass
class IndexReport:
    collection: str
    source: str
    model: str
    indexed: int = 0
    skipped: Counter = field(default_factory=Counter)
    skipped_items: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    started: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def skip(self, source: str, reason: str) -> None:
        self.skipped[reason] += 1
        self.skipped_items.append({"source": source, "reason": reason})

    def to_dict(self) -> dict:
        return {"collection": self.collection, "source": self.source, "model": self.model,
                "started": self.started, "seconds": round(self.seconds, 3), "indexed": self.indexed,
                "skipped": dict(self.skipped), "skipped_items": self.skipped_items}

    def save(self, directory: Path) -> Path:
        stamp = self.started.replace(":", "").replace("-", "")
        path = Path(directory) / f"index-{self.collection}-{stamp}.json"
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path


def index_records(records: Iterable[PhotoRecord | Skipped], collection: str, gallery: Gallery,
                  embedder: Embedder, batch_size: int = 32, source: str = "",
                  progress: Callable[[PhotoRecord | Skipped], None] | None = None) -> IndexReport:
    """Embed and upsert usable records batch by batch; skip the rest with their reason.

    Idempotent: point ids come from (collection, image digest), so a rerun after an interruption, or the
    same photo twice in one source, never duplicates a photo.
    """
    check_collection_name(collection)
    gallery.check_model(embedder.model_id)
    report = IndexReport(collection, source, embedder.model_id)
    start = time.perf_counter()
    seen: set[str] = set()
    batch: list[PhotoRecord] = []

    def flush() -> None:
        vectors = embedder.vectors(embedder.features([r.image for r in batch]))
        points = [GalleryPoint(point_id(collection, r.sha256), v,
                               make_payload(collection, r.lat, r.lon, r.source, embedder.model_id,
                                            r.sha256, r.extra, embedder.bundle_id))
                  for r, v in zip(batch, vectors)]
        gallery.upsert(points)
        report.indexed += len(points)
        batch.clear()

    for record in records:
        if isinstance(record, Skipped):
            report.skip(record.source, record.reason)
        elif record.sha256 in seen:
            report.skip(record.source, "duplicate_photo")
        else:
            seen.add(record.sha256)
            batch.append(record)
            if len(batch) >= batch_size:
                flush()
        if progress:
            progress(record)
    if batch:
        flush()
    report.seconds = time.perf_counter() - start
    return report


def index_source(path: str | Path, collection: str, gallery: Gallery, embedder: Embedder, settings: Settings,
                 progress: Callable[[PhotoRecord | Skipped], None] | None = None) -> IndexReport:
    """A folder, manifest or photo named on the command line (any path: the user owns the disk), each usable
    photo copied into geoloc's store of originals, from which it is re-embedded or served later."""
    records = iter_source(path, policy=ReadPolicy.from_settings(settings), store=OriginalStore(settings.spool_dir))
    return index_records(records, collection, gallery, embedder, batch_size=settings.batch_size,
                         source=str(path), progress=progress)
