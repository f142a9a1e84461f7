"""Celery tasks: thin wrappers over geoloc.jobs that retry, with backoff, while the gallery (or the disk under
it) cannot be used: unreachable, missing, unreadable, locked by another process.

Each pool process builds its runtime once, when it starts (the model on its own GPU when there are
several, see geoloc.runtime.for_process); the gallery is opened on the first task, inside the retries,
so a worker started before Qdrant is up still comes good. A batch of a cancelled job does nothing.

The worker's main process records which send of a batch it received, for the API to find those the broker lost
(geoloc.deliveries), and fails a batch its hard time limit stopped (Celery acknowledges it, with no outcome).
"""

from __future__ import annotations

import functools
import logging

from celery.exceptions import TimeLimitExceeded
from celery.signals import task_failure, task_received, worker_process_init
from celery.utils.log import current_process_index

from geoloc import jobs
from geoloc.deliveries import DeliveryLog
from geoloc.job_store import RedisJobStore, open_job_store
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


@functools.cache
def _main_process_store() -> RedisJobStore:
    """The job store of the main process, which receives the tasks (runtime() is a pool process's)."""
    return open_job_store(Settings())


@task_received.connect
def _record_taken(request, **_) -> None:
    kwargs = request.kwargs
    DeliveryLog(_main_process_store().redis).taken(kwargs["job_id"], kwargs["batch"], request.id)


@task_failure.connect
def _fail_past_time_limit(exception=None, kwargs=None, **_) -> None:
    if isinstance(exception, TimeLimitExceeded):
        limit = Settings().task_time_limit
        jobs.give_up(_main_process_store(), kwargs, "time_limit",
                     f"the batch ran past GEOLOC_TASK_TIME_LIMIT ({limit} s) and was stopped: send fewer photos "
                     f"a batch (GEOLOC_JOB_BATCH) or allow more time")


def _backoff(retries: int) -> float:
    """GEOLOC_TASK_RETRY_DELAY, then twice that ..., capped below the visibility timeout's margin."""
    settings = runtime().settings
    return jobs.backoff_s(settings.task_retry_delay, retries, margin_s(settings.task_time_limit))


def _run(task, fn, kwargs: dict) -> None:
    rt = runtime()
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
