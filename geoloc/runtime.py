"""The running services, built from settings in one place: the CLI, the API and the workers all ask here.

Embedder, gallery, job store and job runner are made on first use, so a command that only lists
collections never loads a model, and an API started while a Qdrant server is down still answers
(/readyz says why) and opens the gallery once the server is back.
"""

from __future__ import annotations

import logging
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


class Runtime:
    def __init__(self, settings: Settings, embedder: Embedder | None = None):
        self.settings = settings
        self._embedder = embedder
        self._gallery: Gallery | None = None
        self._store: JobStore | None = None
        self._runner: Runner | None = None
        self._lock = threading.RLock()

    @property
    def embedder(self) -> Embedder:
        with self._lock:
            if self._embedder is None:
                self._embedder = Embedder.from_settings(self.settings)
            return self._embedder

    def gallery(self) -> Gallery:
        """Opened on first use for this runtime's model; not kept when opening fails, so the next call
        tries again (a worker started before Qdrant comes good)."""
        with self._lock:
            if self._gallery is None:
                self._gallery = self.open_gallery(dim=self.embedder.dim)
            return self._gallery

    def open_gallery(self, dim: int | None = None) -> Gallery:
        """A gallery handle of its own, for commands that need no model (dim None: whatever it holds)."""
        from geoloc.gallery.open import open_gallery

        return open_gallery(self.settings, dim=dim)

    def job_store(self) -> JobStore:
        with self._lock:
            if self._store is None:
                self._store = open_job_store(self.settings)
            return self._store

    def job_context(self) -> JobContext:
        return JobContext(self.settings, self.embedder, self.gallery(), self.job_store())

    def runner(self) -> Runner:
        """Celery workers through the broker when one is set, else a thread of this process."""
        with self._lock:
            if self._runner is None:
                self._runner = self._make_runner()
            return self._runner

    def _make_runner(self) -> Runner:
        if self.settings.broker_url:
            from geoloc.task_queue import CeleryRunner, make_celery

            return CeleryRunner(make_celery(self.settings))
        # no broker: the job store is this host's files, and batches queued by an earlier run died with it
        interrupted = self.job_store().interrupt_unfinished(
            "the server stopped before this batch ran: submit the photos again (those already indexed are not "
            "duplicated)")
        if interrupted:
            log.warning("%d unfinished jobs from a previous run marked failed", interrupted)
        return InProcessRunner(self.job_context())

    def jobs(self) -> Jobs:
        return Jobs(self.job_store(), self.runner(), self.settings.job_batch)

    def close(self) -> None:
        with self._lock:
            if self._runner is not None:
                self._runner.close()
            if self._gallery is not None:
                self._gallery.close()
            self._runner = self._gallery = None

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
