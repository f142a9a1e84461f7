"""Celery tasks: thin wrappers over geoloc.jobs that retry, with backoff, while the gallery is unreachable.

Each pool process loads the model once, when it starts, on its own GPU when there are several (the
model batch sized for the device unless GEOLOC_BATCH_SIZE says otherwise); the gallery is opened on the
first task, inside the retries, so a worker started before Qdrant is up still comes good.
"""

from __future__ import annotations

import functools
import logging
import os

from celery.signals import worker_process_init
from celery.utils.log import current_process_index

from geoloc.gallery.base import Gallery, GalleryError
from geoloc import job_store, jobs
from geoloc.embedding import Embedder
from geoloc.settings import Settings
from geoloc.workers.app import app, margin_s

log = logging.getLogger(__name__)

GPU_BATCH = 128


@functools.cache
def _settings() -> Settings:
    settings = Settings()
    settings.device = _device(settings.device)
    if "GEOLOC_BATCH_SIZE" not in os.environ and settings.device.startswith("cuda"):
        settings.batch_size = GPU_BATCH
    return settings


def _device(configured: str) -> str:
    """As configured; 'auto' is CUDA when present, pool process i on GPU i mod n, so one worker run with
    --concurrency N drives the N GPUs of its machine."""
    if configured != "auto":
        return configured
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{(current_process_index(base=0) or 0) % torch.cuda.device_count()}"


@functools.cache
def _embedder() -> Embedder:
    return Embedder.from_settings(_settings())


@functools.cache
def _store():
    return job_store.open_job_store(_settings())


@functools.cache
def _gallery() -> Gallery:
    from geoloc.gallery.open import open_gallery

    return open_gallery(_settings(), dim=_embedder().dim)  # not cached when it raises


def context() -> jobs.JobContext:
    return jobs.JobContext(_settings(), _embedder(), _gallery(), _store())


@worker_process_init.connect
def _load_model(**_) -> None:
    _embedder()


def _backoff(retries: int) -> int:
    """1, 2, 4 ... seconds, capped below the visibility timeout's margin."""
    return min(2 ** retries, margin_s(_settings().task_time_limit))


def _run(task, fn, kwargs: dict) -> None:
    try:
        fn(context(), **kwargs)
    except GalleryError as exc:
        if task.request.retries < _settings().task_retries:
            log.warning("gallery unavailable (%s): retry %d", exc, task.request.retries + 1)
            raise task.retry(exc=exc, countdown=_backoff(task.request.retries))
        jobs.give_up(_store(), kwargs, "gallery_unavailable", str(exc))
    except Exception as exc:
        jobs.give_up(_store(), kwargs, "internal_error", f"{type(exc).__name__}: {exc}")
        raise


def _register(name: str, function) -> None:
    @app.task(name=name, bind=True)
    def task(self, **kwargs) -> None:
        _run(self, function, kwargs)


# one Celery task per job function, under the name the planner sends (jobs.TASKS)
for _name, _function in jobs.TASKS.items():
    _register(_name, _function)
