"""The running services, built from settings in one place: the CLI, the API and the workers all ask here.

Embedder, gallery, job store and job runner are made on first use, so a command that only lists
collections never loads a model, and an API started while a Qdrant server is down still answers
(/readyz says why) and opens the gallery once the server is back.
"""

from __future__ import annotations

import json
import logging
import os
import threading

from geoloc.embedding import Embedder
from geoloc.gallery.base import Gallery
from geoloc.job_store import JobStore, open_job_store
from geoloc.jobs import InProcessRunner, JobContext, Jobs, Runner
from geoloc.settings import Settings

log = logging.getLogger(__name__)


def for_process(settings: Settings, process_index: int | None = None) -> Settings:
    """Settings with "auto" resolved for one process: process i of a worker runs on GPU i mod n, and the
    batch is sized for its device unless GEOLOC_BATCH_SIZE says otherwise."""
    from geoloc.models.device import default_batch_size, resolve_device

    device = resolve_device(settings.device, process_index)
    update = {"device": str(device)}
    if "batch_size" not in settings.model_fields_set:
        update["batch_size"] = default_batch_size(device)
    return settings.model_copy(update=update)


def encoder_settings(settings: Settings) -> dict:
    """The settings that choose a model: recorded with its gallery store, so another process (or a switch
    after a re-embed) can build the same model again."""
    return {"backbone": settings.backbone, "checkpoint": settings.checkpoint, "bundle": settings.bundle}


class Runtime:
    """`follow_serving`: use the model that serves the gallery's queries (it changes when a re-embed
    completes) rather than the one the settings name, whenever the gallery knows how to build it. The API,
    the workers and plain CLI commands follow; a command given a model on its command line does not."""

    def __init__(self, settings: Settings, embedder: Embedder | None = None, follow_serving: bool = True):
        self.settings = settings
        self.follow_serving = follow_serving
        self._own = embedder
        self._embedders: dict[str, Embedder] = {}
        self._galleries: dict[str, Gallery] = {}
        self._store: JobStore | None = None
        self._runner: Runner | None = None
        self._maintenance: Runner | None = None
        self._pinned: dict[str, Embedder] = {}  # encoder settings -> the model they build
        self._serving_read: tuple[tuple | None, str | None] = (None, None)  # (models.json's stat, its serving id)
        self._lock = threading.RLock()

    @property
    def embedder(self) -> Embedder:
        with self._lock:
            own = self._own_model()
            serving = self._serving_model() if self.follow_serving else None
            if serving is None or serving == own.model_id:
                return own
            return self._embedder_for(serving)

    def _own_model(self) -> Embedder:
        """The model the settings name, built once."""
        with self._lock:
            if self._own is None:
                self._own = Embedder.from_settings(self.settings)
            return self._own

    def _stores(self):
        from geoloc.gallery.stores import ModelStores

        return ModelStores(self.settings.gallery_dir)

    def _serving_model(self) -> str | None:
        """The model models.json says serves queries, read again only when the file changes (every request asks;
        the file is replaced whole on each write, so its stat changes with it)."""
        from geoloc.gallery.stores import REGISTRY_FILE

        try:
            info = os.stat(self.settings.gallery_dir / REGISTRY_FILE)
            stat = (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size)
        except OSError:
            stat = None  # no file yet, or one that cannot be read: read() says which
        if stat is None or stat != self._serving_read[0]:
            self._serving_read = (stat, self._stores().serving())
        return self._serving_read[1]

    def warm_up(self, features=None) -> None:
        """What a serving process's first locate would otherwise pay for: torch threads set, the serving model
        loaded and run once (through `features(embedder, images)` if given: see locate.warm_up), its store
        opened, place names and calibrator loaded. A gallery that cannot be opened yet is left to the requests,
        which answer 503 until it comes good."""
        import torch

        from geoloc.gallery.base import GalleryError
        from geoloc.locate import warm_up

        torch.set_num_threads(max(1, self.settings.torch_threads // self.settings.serve_lanes))
        own = self._own_model()
        try:
            embedder = self.serving()[0]
        except GalleryError as exc:
            log.warning("the gallery cannot be opened yet (%s): requests will try again", exc)
            embedder = own
        warm_up(embedder, self.settings.home, features)

    def _embedder_for(self, model_id: str) -> Embedder:
        """The serving model, built from the encoder settings recorded with its store (once)."""
        if model_id not in self._embedders:
            spec = self._stores().encoder_of(model_id)
            if not spec:
                log.warning("the gallery serves model %s, whose settings it does not record: using %s",
                            model_id, self._own.model_id)
                return self._own
            embedder = Embedder.from_settings(self.settings.model_copy(update=spec))
            if embedder.model_id != model_id:
                log.warning("the recorded settings of %s now build %s: using %s", model_id, embedder.model_id,
                            self._own.model_id)
                return self._own
            self._embedders[model_id] = embedder
        return self._embedders[model_id]

    def gallery(self) -> Gallery:
        """The store of the current model, opened on first use; not kept when opening fails, so the next
        call tries again (a worker started before Qdrant comes good)."""
        return self.serving()[1]

    def serving(self) -> tuple[Embedder, Gallery]:
        """The model that serves queries and its store, read together so a switch between the two reads
        cannot pair one model's query with another's store."""
        with self._lock:
            embedder = self.embedder
            return embedder, self._gallery_for(embedder, encoder_settings(self.settings)
                                               if embedder is self._own else None)

    def _gallery_for(self, embedder: Embedder, encoder: dict | None) -> Gallery:
        """One handle per model's store in this process (an embedded store admits one opener)."""
        if embedder.model_id not in self._galleries:
            from geoloc.gallery.open import open_gallery

            self._galleries[embedder.model_id] = open_gallery(self.settings, embedder.dim, embedder.model_id, encoder)
        return self._galleries[embedder.model_id]

    def every_store(self) -> list[Gallery]:
        """Every model's store of the gallery, opened once like the serving one: what a delete must cover."""
        from geoloc.gallery.open import open_every_store

        with self._lock:
            return list(open_every_store(self.settings, self._galleries).values())

    def held_store(self, model_id: str | None, dim: int | None = None,
                   encoder: dict | None = None) -> tuple[str, Gallery]:
        """A model's store (None: the serving one) and its model id, kept open like the others: what the API
        lends the processes beside it when it owns the embedded gallery (gallery.lending)."""
        from geoloc.gallery.open import hold_store

        with self._lock:
            return hold_store(self.settings, self._galleries, model_id, dim, encoder)

    def open_gallery(self) -> Gallery:
        """A handle of its own on the store serving queries, for commands that need no model."""
        from geoloc.gallery.open import open_gallery

        return open_gallery(self.settings)

    def job_store(self) -> JobStore:
        with self._lock:
            if self._store is None:
                self._store = open_job_store(self.settings)
            return self._store

    def job_context(self) -> JobContext:
        return JobContext(self.settings, self.embedder, self.gallery(), self.job_store(), self.context_for_model,
                          self.every_store)

    def context_for_model(self, encoder: dict) -> JobContext:
        """The job context of the model these encoder settings build (a re-embed's target); its model is
        loaded once and is the one queries use if it comes to serve."""
        settings = self.settings.model_copy(update=encoder)
        key = json.dumps(encoder, sort_keys=True)
        with self._lock:
            if key not in self._pinned:
                embedder = Embedder.from_settings(settings)
                self._pinned[key] = self._embedders.setdefault(embedder.model_id, embedder)
            embedder = self._pinned[key]
            return JobContext(settings, embedder, self._gallery_for(embedder, encoder), self.job_store())

    def runner(self) -> Runner:
        """Celery workers through the broker when one is set, else a thread of this process."""
        with self._lock:
            if self._runner is None:
                self._runner = self._make_runner()
            return self._runner

    def _make_runner(self) -> Runner:
        if self.settings.broker_url:
            from geoloc.task_queue import CeleryRunner, make_celery

            return CeleryRunner(make_celery(self.settings), self.job_store(), self.settings.task_time_limit)
        # no broker: the job store is this host's files, and batches queued by an earlier run died with it
        interrupted = self.job_store().interrupt_unfinished(
            "the server stopped before this batch ran: submit the photos again (those already indexed are not "
            "duplicated)")
        if interrupted:
            log.warning("%d unfinished jobs from a previous run marked failed", interrupted)
        return InProcessRunner(self.job_context, self.job_store(), self.settings.task_retries,
                               self.settings.task_retry_delay)

    def maintenance_runner(self) -> Runner:
        """A thread of this process for index builds, with or without a broker: a build runs where the gallery
        is held (here, or in the Qdrant server, where it returns at once) and takes as long as the gallery is
        large, which a worker's task time limit would cut short and the broker would then hand out again.
        Index jobs a stopped server left unfinished are cancelled (with a server backend one lasts
        milliseconds, so another replica's restart cannot catch one running)."""
        with self._lock:
            if self._maintenance is None:
                store = self.job_store()
                _cancel_stale_index_jobs(store)
                self._maintenance = InProcessRunner(self.job_context, store, self.settings.task_retries,
                                                    self.settings.task_retry_delay)
            return self._maintenance

    def jobs(self) -> Jobs:
        return Jobs(self.job_store(), self.runner(), self.settings.job_batch, self.maintenance_runner())

    def close(self) -> None:
        with self._lock:
            for gallery in self._galleries.values():
                gallery.index.stop()  # a running index job then ends at once instead of holding the close
            for runner in (self._maintenance, self._runner):
                if runner is not None:
                    runner.close()
            for gallery in self._galleries.values():
                gallery.close()
            self._runner, self._maintenance, self._galleries = None, None, {}

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _cancel_stale_index_jobs(store: JobStore) -> None:
    """Cancel the index jobs a stopped server left unfinished; a job store out of reach (a broker down at
    start) only delays that to the next start: the server still starts, and its job routes answer 503."""
    try:
        for job in store.unfinished():
            if job["kind"] == "index":
                store.cancel(job["id"], "the server stopped before this index build ended: start it again")
    except Exception as exc:  # noqa: BLE001 - whichever store: Redis's errors are not OSErrors
        log.warning("could not look for index jobs a stopped server left: %s", exc)
