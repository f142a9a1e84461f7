"""What the API runs on, built once at startup: the runtime (model, gallery, jobs) plus keys, audit log,
collection registry and the store of originals."""

from __future__ import annotations

from dataclasses import dataclass

from geoloc.audit import AuditLog
from geoloc.embedding import Embedder
from geoloc.gallery.base import Gallery
from geoloc.ingest.originals import OriginalStore
from geoloc.jobs import Jobs
from geoloc.keys import KeyStore
from geoloc.retention import sweep_in_background
from geoloc.runtime import Runtime
from geoloc.search_api.registry import CollectionRegistry
from geoloc.settings import Settings


@dataclass
class Services:
    runtime: Runtime
    keys: KeyStore
    audit: AuditLog
    registry: CollectionRegistry
    originals: OriginalStore
    jobs: Jobs

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    @property
    def embedder(self) -> Embedder:
        return self.runtime.embedder

    def gallery(self) -> Gallery:
        return self.runtime.gallery()

    def serving(self) -> tuple[Embedder, Gallery]:
        return self.runtime.serving()

    def broker_reachable(self) -> bool:
        import redis

        client = redis.Redis.from_url(self.settings.broker_url, socket_connect_timeout=2, socket_timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()

    def close(self) -> None:
        self.runtime.close()


def build_services(settings: Settings, embedder: Embedder | None = None) -> Services:
    runtime = Runtime(settings, embedder)
    jobs = runtime.jobs()
    sweep_in_background(settings, runtime.every_store, jobs.store)  # what earlier runs left in the spool
    return Services(runtime, KeyStore(settings.keys_path), AuditLog(settings.audit_path),
                    CollectionRegistry(settings.home / "collections.json"), OriginalStore(settings.spool_dir), jobs)
