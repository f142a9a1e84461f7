"""Celery tasks: thin wrappers over geoloc.jobs that retry, with backoff, while the gallery (or the disk under
it) cannot be used: unreachable, missing, unreadable, locked by another process.

Each pool process builds its runtime once, when it starts (the model on its own GPU when there are
several, see geoloc.runtime.for_process); the gallery is opened on the first task, inside the retries,
so a worker started before Qdrant is up still comes good. A batch of a cancelled job does nothing. Which send
of a batch a worker began is recorded, for the API to find those the broker lost (geoloc.deliveries).
"""

from __future__ import annotations

import functools
import logging

from celery.signals import worker_process_init
from celery.utils.log import current_process_index

from geoloc import jobs
from geoloc.deliveries import DeliveryLog
from geoloc.runtime import Runtime, for_process
from geoloc.settings import Settings
from geoloc.task_queue import margin_s
from geoloc.workers.app import app

log = logging.getLogger(__name__)


@functools.cache
def runtime() -> Runtime:
    return Runtime(for_process(Settings(), current_process_index(base=0)))


@worker_process_init.connect
def _load_model(**_) -> None:
    runtime().embedder


def _backoff(retries: int) -> float:
    """GEOLOC_TASK_RETRY_DELAY, then twice that ..., capped below the visibility timeout's margin."""
    settings = runtime().settings
    return jobs.backoff_s(settings.task_retry_delay, retries, margin_s(settings.task_time_limit))


def _run(task, fn, kwargs: dict) -> None:
    rt = runtime()
    DeliveryLog(rt.job_store().redis).begun(kwargs["job_id"], kwargs["batch"], task.request.id)
    try:
        jobs.execute(fn, rt.job_context, rt.job_store(), kwargs)
    except jobs.RETRYABLE as exc:
        if task.request.retries < rt.settings.task_retries:
            log.warning("gallery unavailable (%s): retry %d", exc, task.request.retries + 1)
            raise task.retry(exc=exc, countdown=_backoff(task.request.retries))
        jobs.give_up(rt.job_store(), kwargs, jobs.fault_reason(exc), str(exc))
    except Exception as exc:
        jobs.give_up(rt.job_store(), kwargs, "internal_error", f"{type(exc).__name__}: {exc}")
        raise


def _register(name: str, function) -> None:
    @app.task(name=name, bind=True)
    def task(self, **kwargs) -> None:
        _run(self, function, kwargs)


# one Celery task per job function, under the name the planner sends (jobs.TASKS)
for _name, _function in jobs.TASKS.items():
    _register(_name, _function)
