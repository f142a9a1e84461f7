"""Background jobs over the gallery: index uploaded or imported photos, prune, re-embed for a new model.

A job is split into batches, one task each. The task functions here are the whole job logic: Celery
workers (workers.tasks) and the in-process runner of `geoloc serve` both call them, with JSON-only
arguments. Each batch's outcome is recorded once in the job store (geoloc.job_store): a task redelivered
after a killed worker, or retried, can redo its gallery writes (point ids are deterministic, so upserts
and deletes are idempotent) but never counts twice.
A batch of a cancelled job does nothing, and one writing when its job was cancelled deletes what it wrote;
one the gallery or its disk refuses is retried with backoff, then fails with the reason.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from geoloc.gallery.base import Gallery, GalleryError, GalleryPoint, Hit, SearchFilter
from geoloc.embedding import Embedder
from geoloc.indexing import index_records
from geoloc.job_store import JobStore, Outcome, cancelled_outcome
from geoloc.maintenance_index import ALL_COLLECTIONS, TASK as INDEX_TASK, index_gallery
from geoloc.retention import release_quietly
from geoloc.settings import Settings
from geoloc.imports import check_import_path, plan_import
from geoloc.ingest.files import ReadPolicy
from geoloc.ingest.originals import OriginalStore
from geoloc.ingest.records import PhotoRecord, Skipped, point_id
from geoloc.ingest.sources import read_photo_file

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------- tasks

@dataclass
class JobContext:
    """What a task needs: the serving model and its gallery store, the job store, and a way to reach
    another model's context (`for_model(encoder settings)`) for re-embedding into it."""

    settings: Settings
    embedder: Embedder
    gallery: Gallery
    jobs: JobStore
    for_model: Callable[[dict], JobContext] | None = None
    stores: Callable[[], list[Gallery]] | None = None  # every model's store (default: the serving one)

    def every_store(self) -> list[Gallery]:
        return self.stores() if self.stores is not None else [self.gallery]


def index_batch(ctx: JobContext, job_id: str, batch: int, collection: str, items: list[dict],
                roots: list[str] | None = None) -> None:
    """Embed and upsert a batch of photos, each {"path", "source", "lat", "lon", "extra"} (no lat/lon:
    EXIF), reading only files that resolve inside `roots` (None: anywhere). Each usable photo is kept in
    geoloc's store of originals, from which it can be re-embedded or served later; an uploaded one that
    cannot be used is not kept."""
    ctx.jobs.mark_started(job_id)
    policy = ReadPolicy.from_settings(ctx.settings, roots)
    store = OriginalStore(ctx.settings.spool_dir)
    usable: set[str] = set()

    def records() -> Iterator[PhotoRecord | Skipped]:
        for i in items:
            if ctx.jobs.is_cancelled(job_id):
                return
            record = read_photo_file(i["source"], i["path"], i.get("lat"), i.get("lon"), i.get("extra"), policy,
                                     store)
            if isinstance(record, PhotoRecord):
                usable.add(record.sha256)
            yield record

    report = index_records(records(), collection, ctx.gallery, ctx.embedder,
                           batch_size=ctx.settings.batch_size, source=f"job {job_id}")
    cancelled = _undo_if_cancelled(ctx, ctx.gallery, job_id, batch, collection,
                                   [point_id(collection, digest) for digest in usable], len(items))
    if not cancelled:
        # a photo already in the collection is done for the job (a batch redelivered after a killed worker
        # finds its own earlier writes), though indexing did not need to embed it again
        again = [item for item in report.skipped_items if item["reason"] == "already_indexed"]
        outcome = Outcome(done=report.indexed + len(again))
        for item in report.skipped_items:
            if item["reason"] != "already_indexed":
                outcome.skip(item["source"], item["reason"])
        ctx.jobs.finish(job_id, batch, outcome)
    uploaded = {store.digest_of(i["path"]) for i in items} - {None}
    release_quietly(ctx.every_store, ctx.jobs, store, uploaded | usable if cancelled else uploaded - usable,
                    but_job=job_id)


def _undo_if_cancelled(ctx: JobContext, gallery: Gallery, job_id: str, batch: int, collection: str,
                       written: list[str], size: int) -> bool:
    """After a batch's writes: if its job was cancelled meanwhile, delete the points it wrote and record the
    batch as cancelled. A delete cancels the jobs before it deletes, so it or this removes every write."""
    if not ctx.jobs.is_cancelled(job_id):
        return False
    if written:
        gallery.delete(SearchFilter(collections=[collection]), ids=written)
    ctx.jobs.finish(job_id, batch, cancelled_outcome(size))
    return True


def prune_region(ctx: JobContext, job_id: str, batch: int, collection: str, box=None, radius=None) -> None:
    """Remove every photo of the collection inside the box and/or radius (one filtered delete)."""
    ctx.jobs.mark_started(job_id)
    removed = ctx.gallery.delete(prune_region_filter(collection, box, radius))
    ctx.jobs.finish(job_id, batch, Outcome(done=removed, removed=removed))


def _originals(hits: list[Hit], settings: Settings) -> Iterator[tuple[Hit, PhotoRecord | Skipped]]:
    """Each photo decoded again from geoloc's own copy of its bytes (found by their digest), never from
    a path its payload names."""
    store = OriginalStore(settings.spool_dir)
    policy = ReadPolicy.from_settings(settings, roots=[store.directory])
    for hit in hits:
        source = hit.payload.get("source") or hit.id
        path = store.find(hit.payload.get("sha256"))
        if path is None:
            yield hit, Skipped(source, "no_original")
            continue
        yield hit, read_photo_file(source, path, hit.lat, hit.lon, None, policy)


def _embeddable(ctx: JobContext, hits: list[Hit], outcome: Outcome) -> tuple[list[Hit], np.ndarray]:
    """The hits whose originals still decode, with their features under ctx's model; the rest are skipped."""
    usable, images = [], []
    for hit, record in _originals(hits, ctx.settings):
        if isinstance(record, Skipped):
            outcome.skip(record.source, record.reason)
        else:
            usable.append(hit)
            images.append(record.image)
    return usable, ctx.embedder.features(images) if images else np.zeros((0, ctx.embedder.dim), np.float32)


def prune_unplaceable(ctx: JobContext, job_id: str, batch: int, collection: str, ids: list[str]) -> None:
    """Remove the photos the classifier does not put in their own cell (paper 3.3.3): a retrieval
    gallery of placeable photos only. Photos whose original is gone are kept and reported."""
    bundle = ctx.embedder.bundle
    if bundle is None:
        raise ValueError("pruning unplaceable photos needs a model bundle (GEOLOC_BUNDLE)")
    ctx.jobs.mark_started(job_id)
    outcome = Outcome()
    hits, features = _embeddable(ctx, ctx.gallery.retrieve(ids), outcome)
    if hits:
        predicted = np.argmax(bundle.cell_log_probs(features), axis=1)
        true_cells = bundle.hierarchy.fine.assign_leaves([h.payload["s2"] for h in hits])
        misplaced = [h.id for h, p, t in zip(hits, predicted, true_cells) if p != t]
        outcome.done = len(hits)
        if misplaced:
            outcome.removed = ctx.gallery.delete(SearchFilter(collections=[collection]), ids=misplaced)
    ctx.jobs.finish(job_id, batch, outcome)


def reembed_batch(ctx: JobContext, job_id: str, batch: int, collection: str, ids: list[str],
                  target: dict | None = None) -> None:
    """Embed these photos of the serving store again, from their originals: into the store of the `target`
    model (its encoder settings) while the serving one keeps answering, or in place (after a new bundle of
    the same backbone). Queries switch to the target once its store holds every photo (switch_when_complete)."""
    ctx.jobs.mark_started(job_id)
    into = ctx if target is None else ctx.for_model(target)
    outcome = Outcome()
    hits, features = _embeddable(into, ctx.gallery.retrieve(ids), outcome)
    if hits:
        vectors = into.embedder.vectors(features)
        made_by = {"model": into.embedder.model_id, "bundle": into.embedder.bundle_id}
        into.gallery.upsert([GalleryPoint(h.id, v, {**h.payload, **made_by}) for h, v in zip(hits, vectors)])
        outcome.done = len(hits)
        if _undo_if_cancelled(ctx, into.gallery, job_id, batch, collection, [h.id for h in hits], len(ids)):
            return
    ctx.jobs.finish(job_id, batch, outcome)
    if target is not None and (ctx.jobs.get(job_id) or {}).get("state") == "succeeded":
        switch_when_complete(ctx, into)


def switch_when_complete(serving: JobContext, candidate: JobContext) -> bool:
    """Make the candidate model serve queries once its store holds every photo of every collection the
    serving store holds (a photo whose original is gone keeps the switch waiting: re-index or prune it)."""
    from geoloc.gallery.stores import ModelStores

    held, filled = serving.gallery.collections(), candidate.gallery.collections()
    if any(filled.get(name, 0) < count for name, count in held.items()):
        return False
    ModelStores(serving.settings.gallery_dir).switch(candidate.embedder.model_id)
    log.info("queries now use model %s", candidate.embedder.model_id)
    return True


TASKS = {
    "geoloc.index_batch": index_batch,
    "geoloc.prune_region": prune_region,
    "geoloc.prune_unplaceable": prune_unplaceable,
    "geoloc.reembed_batch": reembed_batch,
    INDEX_TASK: index_gallery,
}


# a batch the gallery, or the disk under it, refused: worth trying again later
RETRYABLE = (GalleryError, OSError)


def fault_reason(exc: BaseException) -> str:
    return "gallery_unavailable" if isinstance(exc, GalleryError) else "storage_unavailable"


def backoff_s(first_s: float, attempt: int, cap_s: float) -> float:
    """first_s, 2 first_s, 4 first_s ... before retry number attempt + 1, at most cap_s."""
    return min(first_s * 2 ** attempt, cap_s)


def _size(kwargs: dict) -> int:
    return len(kwargs.get("items") or kwargs.get("ids") or [])


def give_up(store: JobStore, kwargs: dict, reason: str, message: str) -> None:
    """Count a batch that cannot be done as failed, so its job still finishes and says why."""
    size = _size(kwargs)
    store.finish(kwargs["job_id"], kwargs["batch"], Outcome(failed=size, reasons={reason: size} if size else {},
                                                            error=message))


def execute(task: Callable[..., None], context: Callable[[], JobContext], store: JobStore, kwargs: dict) -> None:
    """Run one batch unless its job was cancelled (recorded so without asking for a context: a cancelled batch
    needs no gallery) or a copy of it ran (geoloc.deliveries). Errors propagate, for the caller to retry or give up."""
    if store.is_cancelled(kwargs["job_id"]):
        store.finish(kwargs["job_id"], kwargs["batch"], cancelled_outcome(_size(kwargs)))
    elif kwargs["batch"] not in store.finished_batches(kwargs["job_id"]):
        task(context(), **kwargs)


# ---------------------------------------------------------------------------------------------- planning

class Runner(Protocol):
    def submit(self, task: str, batches: list[dict]) -> None: ...

    def close(self) -> None: ...


class InProcessRunner:
    """Runs tasks one at a time on a thread of this process: `geoloc serve` with no broker. `context` is
    asked for each task, so a task runs with the model that serves when it starts. A batch the gallery or
    its disk refuses is tried `retries` more times after backoff_s (closing the runner ends the wait)."""

    MAX_DELAY_S = 60.0

    def __init__(self, context: Callable[[], JobContext], store: JobStore, retries: int = 0,
                 retry_delay_s: float = 1.0):
        self.context, self.store = context, store
        self.retries, self.retry_delay_s = retries, retry_delay_s
        self._closing = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="geoloc-jobs")

    def submit(self, task: str, batches: list[dict]) -> None:
        for kwargs in batches:
            self._pool.submit(self._run, task, kwargs)

    def _run(self, task: str, kwargs: dict) -> None:
        for attempt in itertools.count():
            try:
                execute(TASKS[task], self.context, self.store, kwargs)
                return
            except RETRYABLE as exc:
                delay = backoff_s(self.retry_delay_s, attempt, self.MAX_DELAY_S)
                if attempt >= self.retries or self._closing.wait(delay):
                    give_up(self.store, kwargs, fault_reason(exc), str(exc))
                    return
                log.warning("batch %s of job %s: %s; retry %d in %.1f s", kwargs.get("batch"), kwargs.get("job_id"),
                            exc, attempt + 1, delay)
            except Exception as exc:
                log.exception("task %s of job %s failed", task, kwargs.get("job_id"))
                give_up(self.store, kwargs, "internal_error", f"{type(exc).__name__}: {exc}")
                return

    def close(self) -> None:
        """Finish the running batch, drop the queued ones (marked failed at the next start)."""
        self._closing.set()
        self._pool.shutdown(wait=True, cancel_futures=True)


def prune_region_filter(collection: str, box=None, radius=None) -> SearchFilter:
    """The photos a region prune removes (and what its dry run previews)."""
    return SearchFilter(collections=[collection], box=tuple(box) if box else None,
                        radius=tuple(radius) if radius else None)


def _chunks(values: list, size: int) -> list[list]:
    return [values[i:i + size] for i in range(0, len(values), size)]


class Jobs:
    """Creates jobs, splits them into batches and hands the batches to a runner; index builds go to
    `maintenance` when given (see Runtime.maintenance_runner)."""

    def __init__(self, store: JobStore, runner: Runner, batch_size: int, maintenance: Runner | None = None):
        self.store, self.runner, self.batch_size = store, runner, max(1, batch_size)
        self.maintenance = maintenance

    def get(self, job_id: str) -> dict | None:
        return self.store.get(job_id)

    def _submit(self, kind: str, task: str, collection: str, owner: str, total: int,
                payloads: list[dict], pre: Outcome | None = None, originals: list[str] | None = None,
                runner: Runner | None = None) -> str:
        job_id = self.store.create(kind, collection, total, len(payloads), owner, pre, originals)
        (runner or self.runner).submit(task, [{"job_id": job_id, "batch": number, "collection": collection, **payload}
                                              for number, payload in enumerate(payloads, start=1)])
        return job_id

    def build_index(self, owner: str, points: int) -> str:
        """Queue a build of every store's vector index over a gallery of `points` photos; its job id."""
        return self._submit("index", INDEX_TASK, ALL_COLLECTIONS, owner, points, [{}], runner=self.maintenance)

    def index(self, collection: str, items: list[dict], owner: str, pre: Outcome | None = None,
              kind: str = "upload", roots: Iterable[Path] | None = None, originals: list[str] | None = None) -> str:
        """Photos {"path", "source", "lat", "lon", "extra"}, read only inside `roots` (None: anywhere);
        `pre`: those refused before queueing; `originals`: the digests of stored copies the items are."""
        total = len(items) + (pre.skipped + pre.failed if pre else 0)
        allowed = None if roots is None else [str(root) for root in roots]
        payloads = [{"items": chunk, "roots": allowed} for chunk in _chunks(items, self.batch_size)]
        return self._submit(kind, "geoloc.index_batch", collection, owner, total, payloads, pre, originals)

    def import_source(self, collection: str, path: Path, owner: str, roots: Iterable[Path]) -> str:
        """A folder or manifest on the server: every file it names is read only if it lies inside `roots`."""
        roots = [Path(root).resolve() for root in roots]
        items, pre = plan_import(check_import_path(path, roots), roots)
        return self.index(collection, items, owner, pre, kind="import", roots=roots)

    def prune(self, gallery: Gallery, collection: str, owner: str, box=None, radius=None,
              unplaceable: bool = False) -> str:
        where = prune_region_filter(collection, box, radius)
        if not unplaceable:
            total = gallery.count(where)
            return self._submit("prune", "geoloc.prune_region", collection, owner, total,
                                [{"box": box, "radius": radius}])
        ids = [hit.id for hit in gallery.scroll(where)]
        payloads = [{"ids": chunk} for chunk in _chunks(ids, self.batch_size)]
        return self._submit("prune", "geoloc.prune_unplaceable", collection, owner, len(ids), payloads)

    def reembed(self, gallery: Gallery, collection: str, owner: str, target: dict | None = None) -> str:
        """`target`: the encoder settings of another model to fill the store of (None: the serving model)."""
        ids = [hit.id for hit in gallery.scroll(SearchFilter(collections=[collection]))]
        payloads = [{"ids": chunk, "target": target} for chunk in _chunks(ids, self.batch_size)]
        return self._submit("reembed", "geoloc.reembed_batch", collection, owner, len(ids), payloads)
