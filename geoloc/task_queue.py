"""The Celery application that carries job batches from the API to the workers over Redis.

Both sides build it here: the API process only sends tasks, `geoloc worker` runs them
(geoloc.workers.tasks registers one task per job function). Celery comes with the `workers` extra.

Timing, from one setting (GEOLOC_TASK_TIME_LIMIT, the longest a task may run):
* soft limit = limit - margin: the task fails its batch cleanly (the job still finishes);
* hard limit = limit: the pool process is killed;
* broker visibility timeout = limit + margin: a task unacknowledged for that long (its worker died) is
  delivered again. It must stay above the longest task, or a slow task would run twice at once, and
  retry delays must stay below it (Redis holds a delayed retry as an unacknowledged message).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from geoloc.settings import Settings

if TYPE_CHECKING:
    from celery import Celery

QUEUE = "geoloc"
TASKS_MODULE = "geoloc.workers.tasks"


def margin_s(limit_s: int) -> int:
    return max(5, limit_s // 10)


def make_celery(settings: Settings) -> Celery:
    try:
        from celery import Celery
    except ImportError:
        raise ValueError("a broker is set (GEOLOC_BROKER_URL) but Celery is not installed: "
                         "pip install 'geoloc[workers]'") from None
    limit = settings.task_time_limit
    margin = margin_s(limit)
    app = Celery("geoloc", broker=settings.broker_url, include=[TASKS_MODULE])
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # progress lives in the job store, not in results
        task_default_queue=QUEUE,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # a batch waits in the queue, not behind a busy worker
        task_time_limit=limit,
        task_soft_time_limit=limit - margin,
        broker_transport_options={
            "visibility_timeout": limit + margin,
            # look for abandoned messages often enough that one comes back soon after its timeout
            "unacked_restore_interval": max(1, min(10, margin)),
            "unacked_restore_throttle": 1,
        },
        broker_connection_retry_on_startup=True,
        worker_proc_alive_timeout=300,  # each pool process loads the model before it takes tasks
        worker_hijack_root_logger=False,
    )
    return app


class CeleryRunner:
    """Hands task batches to the workers through the broker."""

    def __init__(self, app: Celery):
        self.app = app

    def submit(self, task: str, kwargs: dict) -> None:
        self.app.send_task(task, kwargs=kwargs, queue=QUEUE)

    def close(self) -> None:
        """Nothing runs here: queued batches stay with the broker for the workers."""
