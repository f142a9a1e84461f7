"""The Celery application that carries job batches from the API to the workers over Redis.

Both sides build it here: the API process only sends tasks, `geoloc worker` runs them
(geoloc.workers.tasks registers one task per job function). Celery comes with the `workers` extra.

Timing, from one setting (GEOLOC_TASK_TIME_LIMIT, the longest a task may run):
* soft limit = limit - margin: the task fails its batch cleanly (the job still finishes);
* hard limit = limit: the pool process is killed;
* broker visibility timeout = limit + margin: a task unacknowledged for that long (its worker died) is
  delivered again. It must stay above the longest task, or a slow task would run twice at once, and
  retry delays must stay below it (Redis holds a delayed retry as an unacknowledged message);
* a batch no worker holds, with the queue empty or passed by it that long ago (plus the restore interval and
  the margin), is lost, and the runner sends it again (geoloc.deliveries).
"""

from __future__ import annotations

import json
import logging
import threading
from typing import TYPE_CHECKING

from geoloc.deliveries import LostBatches
from geoloc.job_store import RedisJobStore
from geoloc.settings import Settings

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)

QUEUE = "geoloc"
TASKS_MODULE = "geoloc.workers.tasks"


def margin_s(limit_s: int) -> int:
    return max(5, limit_s // 10)


def restore_interval_s(limit_s: int) -> int:
    """How often a worker looks for abandoned tasks to hand back."""
    return max(1, min(10, margin_s(limit_s)))


def lost_after_s(limit_s: int) -> int:
    """How long after the queue passed a batch no worker holds it counts as lost: the visibility timeout, one
    restore interval and a margin (a task handed back after a dead worker is taken again within that)."""
    return limit_s + 2 * margin_s(limit_s) + restore_interval_s(limit_s)


def broker_state(client) -> tuple[set[str], int]:
    """The ids of the tasks workers hold (running, reserved or waiting to retry: kombu's Redis transport keeps
    them in its unacknowledged hash) and how many tasks wait in the queue, read at one instant."""
    from kombu.transport.redis import Channel

    queues = [QUEUE] + [f"{QUEUE}{Channel.sep}{step}" for step in Channel.priority_steps if step]
    with client.pipeline(transaction=True) as pipe:
        pipe.hvals(Channel.unacked_key)
        for queue in queues:
            pipe.llen(queue)
        held, *sizes = pipe.execute()
    return {_task_id(message) for message in held} - {None}, sum(sizes)


def _task_id(unacked: str) -> str | None:
    try:
        return json.loads(unacked)[0]["headers"]["id"]
    except (ValueError, LookupError, TypeError):  # not a Celery task's message
        return None


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
            "unacked_restore_interval": restore_interval_s(limit),
            "unacked_restore_throttle": 1,
        },
        broker_connection_retry_on_startup=True,
        worker_proc_alive_timeout=300,  # each pool process loads the model before it takes tasks
        worker_hijack_root_logger=False,
    )
    return app


class CeleryRunner:
    """Hands task batches to the workers through the broker, and sends again those it lost: every
    `check_s` seconds, one runner among the API's replicas looks (geoloc.deliveries)."""

    CHECK_LOCK = "geoloc:jobs:lost-check"

    def __init__(self, app: Celery, store: RedisJobStore, limit_s: int):
        self.app, self.redis = app, store.redis
        self.lost = LostBatches(store, lambda: broker_state(store.redis),
                                lambda task, kwargs: self.submit(task, [kwargs]), lost_after_s(limit_s))
        self.check_s = max(1, min(30, lost_after_s(limit_s) // 4))
        self._closing = threading.Event()
        self._checker = threading.Thread(target=self._check_until_closed, name="geoloc-lost-batches", daemon=True)
        self._checker.start()

    def submit(self, task: str, batches: list[dict]) -> None:
        self.lost.deliveries.planned(task, batches)  # all first: one left unsent is then found and sent
        for kwargs in batches:
            task_id = self.lost.deliveries.sent(kwargs["job_id"], kwargs["batch"])  # before a worker can take it
            self.app.send_task(task, kwargs=kwargs, queue=QUEUE, task_id=task_id)

    def _check_until_closed(self) -> None:
        while not self._closing.wait(self.check_s):
            try:
                if self.redis.set(self.CHECK_LOCK, 1, nx=True, ex=self.check_s):
                    self.lost.check()
            except Exception as exc:  # noqa: BLE001 - a broker down now is looked at again next time
                log.warning("could not look for lost batches: %s", exc)

    def close(self) -> None:
        """Queued batches stay with the broker for the workers; only the looking for lost ones stops (a check
        waiting on a broker that does not answer is left to end with the process)."""
        self._closing.set()
        self._checker.join(timeout=5)
