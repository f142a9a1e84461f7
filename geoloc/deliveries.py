"""Job batches the broker lost, found from when each was sent and begun, and sent again (see CeleryRunner).

Celery on Redis can lose a task to a worker killed at the wrong moment (kombu's Redis transport):
* killed between taking the task from the queue and recording it as unacknowledged, about a millisecond of
  each task: nothing ever delivers it again;
* killed while holding the transport's restore lock: no worker hands back abandoned tasks until the lock
  expires, five minutes later;
* a task stopped by its hard time limit ends without an outcome.
So each batch sent is recorded here, and workers record when they begin one and when they were last busy. A
batch without an outcome is lost once `stall_s` has passed (the broker's own time to hand back an abandoned
task, and a margin) since
* a worker began it, or, when no worker began it since it was sent,
* a batch sent after it began (the queue is first in, first out: this one was taken before), or
* the workers were last busy, if that was after it was sent (with no worker at all, it is still queued).
A lost batch is sent again (its outcome counts once and its writes are idempotent) up to MAX_SENDS times in
all, then counted as failed with the reason, so its job still ends.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from geoloc.job_store import JOB_TTL_S, RedisJobStore
from geoloc.jobs import give_up

log = logging.getLogger(__name__)

MAX_SENDS = 3
LOST_REASON = "lost_by_broker"


@dataclass(frozen=True)
class Delivery:
    job_id: str
    batch: int
    sent_at: float  # when it was last sent
    sends: int
    begun_at: float | None  # when a worker last began it
    finished: bool

    @property
    def begun(self) -> bool:
        return self.begun_at is not None and self.begun_at >= self.sent_at


def lost(deliveries: list[Delivery], busy_at: float | None, now: float, stall_s: float) -> list[Delivery]:
    """The unfinished deliveries that, by the rules above, no worker holds and the queue no longer does."""
    cutoff = now - stall_s
    began_long_ago = [d.sent_at for d in deliveries if d.begun and d.begun_at < cutoff]
    overtaken_before = max(began_long_ago, default=float("-inf"))  # sent_at of the latest such batch

    def is_lost(d: Delivery) -> bool:
        if d.begun:
            return d.begun_at < cutoff
        idle = busy_at is not None and d.sent_at < busy_at < cutoff
        return d.sent_at < cutoff and (d.sent_at < overtaken_before or idle)

    return [d for d in deliveries if not d.finished and is_lost(d)]


class DeliveryLog:
    """When each batch was sent (with what, to send it again) and last begun, in the broker's Redis."""

    BUSY = "geoloc:jobs:busy"  # when a worker last began or ended a batch

    def __init__(self, client, clock: Callable[[], float] = time.time):
        self.redis, self.clock = client, clock

    @staticmethod
    def _key(job_id: str, field: str) -> str:
        return f"geoloc:job:{job_id}:{field}"

    def sent(self, task: str, kwargs: dict) -> None:
        job_id, batch = kwargs["job_id"], str(kwargs["batch"])
        keys = [self._key(job_id, field) for field in ("message", "sent_at", "sends")]
        with self.redis.pipeline() as pipe:
            pipe.hsetnx(keys[0], batch, json.dumps({"task": task, "kwargs": kwargs}))
            pipe.hset(keys[1], batch, self.clock()).hincrby(keys[2], batch, 1)
            for key in keys:
                pipe.expire(key, JOB_TTL_S)
            pipe.execute()

    def begun(self, job_id: str, batch: int) -> None:
        key = self._key(job_id, "begun_at")
        with self.redis.pipeline() as pipe:
            pipe.hset(key, str(batch), self.clock()).expire(key, JOB_TTL_S).set(self.BUSY, self.clock()).execute()

    def busy(self) -> None:
        self.redis.set(self.BUSY, self.clock())

    def busy_at(self) -> float | None:
        value = self.redis.get(self.BUSY)
        return float(value) if value is not None else None

    def deliveries(self, job_id: str, finished: set[int]) -> list[Delivery]:
        with self.redis.pipeline() as pipe:
            for field in ("sent_at", "sends", "begun_at"):
                pipe.hgetall(self._key(job_id, field))
            sent_at, sends, begun_at = pipe.execute()
        return [Delivery(job_id, int(batch), float(at), int(sends.get(batch, 1)),
                         float(begun_at[batch]) if batch in begun_at else None, int(batch) in finished)
                for batch, at in sent_at.items()]

    def message(self, job_id: str, batch: int) -> tuple[str, dict]:
        message = json.loads(self.redis.hget(self._key(job_id, "message"), str(batch)))
        return message["task"], message["kwargs"]


def send_lost_again(deliveries: DeliveryLog, store: RedisJobStore, send: Callable[[str, dict], None],
                    stall_s: float) -> int:
    """Send again every lost batch of the open jobs (or fail it after MAX_SENDS); how many were lost."""
    found = [d for job in store.unfinished()
             for d in deliveries.deliveries(job["id"], store.finished_batches(job["id"]))]
    gone = lost(found, deliveries.busy_at(), deliveries.clock(), stall_s)
    for delivery in gone:
        task, kwargs = deliveries.message(delivery.job_id, delivery.batch)
        if delivery.sends >= MAX_SENDS:
            log.error("batch %d of job %s lost %d times: counted as failed", delivery.batch, delivery.job_id,
                      delivery.sends)
            give_up(store, kwargs, LOST_REASON, f"the workers lost this batch {delivery.sends} times (a worker "
                                                f"killed, or a task past its time limit)")
        else:
            log.warning("batch %d of job %s was lost by the broker: sending it again", delivery.batch,
                        delivery.job_id)
            send(task, kwargs)
    return len(gone)
