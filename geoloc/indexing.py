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

ALREADY_INDEXED = "already_indexed"  # skip reason: the collection holds this photo, as it would be written again


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


def _same_payload(stored: dict, payload: dict) -> bool:
    """Equal, but for the last bits of a coordinate (the gallery may round a geo point's degrees)."""
    here, there = stored.get("location") or {}, payload["location"]
    return ({**stored, "location": None} == {**payload, "location": None}
            and all(abs(here.get(axis, float("inf")) - there[axis]) < 1e-9 for axis in ("lat", "lon")))


class _Batches:
    """Records in, gallery points out: each batch is looked up by point id before the backbone sees it, and
    only photos the collection does not hold yet are embedded, batch_size at a time."""

    def __init__(self, collection: str, gallery: Gallery, embedder: Embedder, report: IndexReport,
                 batch_size: int):
        self.collection, self.gallery, self.embedder, self.report = collection, gallery, embedder, report
        self.batch_size = max(1, batch_size)
        self.to_look_up: list[PhotoRecord] = []
        self.to_embed: list[tuple[str, PhotoRecord, dict]] = []

    def add(self, record: PhotoRecord) -> None:
        self.to_look_up.append(record)
        if len(self.to_look_up) >= self.batch_size:
            self._look_up()

    def finish(self) -> None:
        self._look_up()
        self._embed(len(self.to_embed))

    def _payload(self, record: PhotoRecord) -> dict:
        return make_payload(self.collection, record.lat, record.lon, record.source, self.embedder.model_id,
                            record.sha256, record.extra, self.embedder.bundle_id)

    def _look_up(self) -> None:
        """A photo stored with the payload it would get again is skipped as already_indexed; one stored by
        the same model under another payload (a manifest's corrected coordinates) keeps its vector."""
        records = {point_id(self.collection, r.sha256): r for r in self.to_look_up}
        stored = {hit.id: hit for hit in self.gallery.retrieve(list(records))} if records else {}
        relabelled = []
        for pid, record in records.items():
            payload, hit = self._payload(record), stored.get(pid)
            same_model = hit is not None and hit.vector is not None and all(
                hit.payload.get(key) == payload[key] for key in ("model", "bundle"))
            if not same_model:
                self.to_embed.append((pid, record, payload))
            elif _same_payload(hit.payload, payload):
                self.report.skip(record.source, ALREADY_INDEXED)
            else:
                relabelled.append(GalleryPoint(pid, hit.vector, payload))
        self._write(relabelled)
        self.to_look_up.clear()
        while len(self.to_embed) >= self.batch_size:
            self._embed(self.batch_size)

    def _embed(self, n: int) -> None:
        batch, self.to_embed = self.to_embed[:n], self.to_embed[n:]
        if batch:
            vectors = self.embedder.vectors(self.embedder.features([record.image for _, record, _ in batch]))
            self._write([GalleryPoint(pid, v, payload) for (pid, _, payload), v in zip(batch, vectors)])

    def _write(self, points: list[GalleryPoint]) -> None:
        if points:
            self.gallery.upsert(points)
            self.report.indexed += len(points)


def index_records(records: Iterable[PhotoRecord | Skipped], collection: str, gallery: Gallery,
                  embedder: Embedder, batch_size: int = 32, source: str = "",
                  progress: Callable[[PhotoRecord | Skipped], None] | None = None) -> IndexReport:
    """Embed and upsert usable records batch by batch; skip the rest with their reason.

    Idempotent: point ids come from (collection, image digest), so a rerun after an interruption, or the
    same photo twice in one source, never duplicates a photo; and cheap to rerun: photos the collection
    already holds are skipped (`already_indexed`) before the backbone runs.
    """
    check_collection_name(collection)
    gallery.check_model(embedder.model_id)
    report = IndexReport(collection, source, embedder.model_id)
    start = time.perf_counter()
    seen: set[str] = set()
    batches = _Batches(collection, gallery, embedder, report, batch_size)
    for record in records:
        if isinstance(record, Skipped):
            report.skip(record.source, record.reason)
        elif record.sha256 in seen:
            report.skip(record.source, "duplicate_photo")
        else:
            seen.add(record.sha256)
            batches.add(record)
        if progress:
            progress(record)
    batches.finish()
    report.seconds = time.perf_counter() - start
    return report


def index_source(path: str | Path, collection: str, gallery: Gallery, embedder: Embedder, settings: Settings,
                 progress: Callable[[PhotoRecord | Skipped], None] | None = None) -> IndexReport:
    """A folder, manifest or photo named on the command line (any path: the user owns the disk), each usable
    photo copied into geoloc's store of originals, from which it is re-embedded or served later."""
    records = iter_source(path, policy=ReadPolicy.from_settings(settings), store=OriginalStore(settings.spool_dir))
    return index_records(records, collection, gallery, embedder, batch_size=settings.batch_size,
                         source=str(path), progress=progress)
