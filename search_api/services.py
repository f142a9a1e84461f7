"""What the API runs on, built once at startup: the runtime (model, gallery, jobs) plus keys, audit log,
collection registry and the store of originals; and, once started, the loaded model with its batchers."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from geoloc.audit import AuditLog
from geoloc.batching import Batcher
from geoloc.embedding import Embedder
from geoloc.gallery.base import Gallery
from geoloc.ingest.originals import OriginalStore
from geoloc.jobs import Jobs
from geoloc.keys import KeyStore
from geoloc.locate import Locator
from geoloc.retention import sweep_in_background
from geoloc.runtime import Runtime
from geoloc.search_api.registry import CollectionRegistry
from geoloc.settings import Settings

log = logging.getLogger(__name__)
READY_FOR_S = 1.0  # how long a locate's readiness check (model of the store, photos in scope) holds


@dataclass
class Services:
    runtime: Runtime
    keys: KeyStore
    audit: AuditLog
    registry: CollectionRegistry
    originals: OriginalStore
    jobs: Jobs
    model_state: str = "not loaded"  # "ok" once the model has run, else why not: what /readyz reports
    _batchers: dict[str, Batcher] = field(default_factory=dict)  # model id -> its batcher
    _ready: dict[tuple, float] = field(default_factory=dict)  # (model, store, scope) -> when last found ready
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        """Load, before the first request, what every locate needs (Runtime.warm_up). A model that cannot be
        loaded leaves the server up and not ready, saying why; requests try loading it again."""
        try:
            self.runtime.warm_up(self.features)  # on the batcher's thread, where requests run the model
            self.model_state = "ok"
        except Exception as exc:
            log.error("the model could not be loaded: %s", exc)
            self.model_state = f"failed: {exc}"

    def features(self, embedder: Embedder, images: list[Image.Image]) -> np.ndarray:
        """Encoder features of these photos, computed together with those of concurrent requests."""
        with self._lock:
            batcher = self._batchers.get(embedder.model_id)
            if batcher is None:
                batcher = self._batchers[embedder.model_id] = Batcher(
                    embedder.features, self.settings.serve_batch_photos, self.settings.serve_batch_wait_ms / 1000,
                    name=f"geoloc-batcher-{len(self._batchers)}", lanes=self.settings.serve_lanes)
        features = batcher(images)
        self.model_state = "ok"  # a model that failed to load at start may load on a request
        return features

    def check_ready(self, locator: Locator) -> None:
        """Locator.check_ready, at most once per READY_FOR_S for one model, store and scope: every locate asks.
        A gallery fault still shows at once (the search fails), and so does an empty scope without a model bundle
        (the search finds nothing); with one, an answer may come from cell centres for that long."""
        key = (locator.embedder.model_id, id(locator.gallery), tuple(locator.collections or ()))
        if time.monotonic() - self._ready.get(key, float("-inf")) < READY_FOR_S:
            return
        locator.check_ready()
        self._ready[key] = time.monotonic()

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
        with self._lock:
            batchers, self._batchers = list(self._batchers.values()), {}
        for batcher in batchers:
            batcher.close()
        self.runtime.close()


def build_services(settings: Settings, embedder: Embedder | None = None) -> Services:
    runtime = Runtime(settings, embedder)
    jobs = runtime.jobs()
    sweep_in_background(settings, runtime.every_store, jobs.store)  # what earlier runs left in the spool
    return Services(runtime, KeyStore(settings.keys_path), AuditLog(settings.audit_path),
                    CollectionRegistry(settings.home / "collections.json"),
                    OriginalStore(settings.spool_dir, settings.max_pixels), jobs)
