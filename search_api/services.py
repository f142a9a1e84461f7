"""What the API runs on, built once at startup: model, gallery, job runner, keys, audit log, spool."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from geoloc.gallery.base import Gallery
from geoloc.audit import AuditLog
from geoloc.embedding import Embedder
from geoloc.job_store import open_job_store
from geoloc.jobs import InProcessRunner, JobContext, Jobs
from geoloc.keys import KeyStore
from geoloc.settings import Settings
from geoloc.search_api.registry import CollectionRegistry
from geoloc.search_api.spool import Spool

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    embedder: Embedder
    keys: KeyStore
    audit: AuditLog
    registry: CollectionRegistry
    spool: Spool
    jobs: Jobs | None = None
    _gallery: Gallery | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def gallery(self) -> Gallery:
        """Opened on first use, so the API starts (and /readyz says why) while a Qdrant server is down."""
        with self._lock:
            if self._gallery is None:
                from geoloc.gallery.open import open_gallery

                self._gallery = open_gallery(self.settings, dim=self.embedder.dim)
            return self._gallery

    def broker_reachable(self) -> bool:
        import redis

        client = redis.Redis.from_url(self.settings.broker_url, socket_connect_timeout=2, socket_timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()

    def close(self) -> None:
        runner = getattr(self.jobs, "runner", None)
        if isinstance(runner, InProcessRunner):
            runner.close()
        if self._gallery is not None:
            self._gallery.close()


def build_services(settings: Settings, embedder: Embedder | None = None) -> Services:
    """Jobs go to Celery workers through the broker when one is configured, else to a thread here."""
    services = Services(settings, embedder or Embedder.from_settings(settings), KeyStore(settings.keys_path),
                        AuditLog(settings.audit_path), CollectionRegistry(settings.home / "collections.json"),
                        Spool(settings.spool_dir))
    store = open_job_store(settings)
    if settings.broker_url:
        from geoloc.workers.app import CeleryRunner, make_celery

        runner = CeleryRunner(make_celery(settings))
    else:
        interrupted = store.interrupt_unfinished("the server stopped before this batch ran: submit the "
                                                 "photos again (those already indexed are not duplicated)")
        if interrupted:
            log.warning("%d unfinished jobs from a previous run marked failed", interrupted)
        runner = InProcessRunner(JobContext(settings, services.embedder, services.gallery(), store))
    services.jobs = Jobs(store, runner, settings.job_batch)
    return services
