"""Job batches the broker lost, found from the broker's own state, and sent again (see CeleryRunner).

Celery on Redis can lose a task to a worker killed at the wrong moment (kombu's Redis transport):
* killed between taking the task from the queue and recording it as unacknowledged, about a millisecond of
  each task: nothing ever delivers it again;
* a task stopped by its hard time limit is acknowledged without an outcome.
So each send of a batch gets a number from one counter, which is also its task id's tail, and workers record the
highest number they began, per batch and overall (the front). A batch without an outcome whose task no worker
holds (kombu's `unacked` hash: tasks running, reserved or waiting to retry) is lost when, on two checks in a
row (a task in passage between queue and worker is missing from both for a moment):
* the queue is empty, or
* it was not begun since its last send, and the front had passed that send `stall_s` ago: the queue is first in,
  first out, so it was taken, and a task handed back after a dead worker is begun again well within that.
A lost batch is sent again (its outcome counts once, its writes are idempotent, and a copy that finds the
outcome recorded does nothing) up to MAX_SENDS times in all, then counted as failed with the reason.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from geoloc.job_store import JOB_TTL_S, RedisJobStore
from geoloc.jobs import give_up

log = logging.getLogger(__name__)

MAX_SENDS = 3
LOST_REASON = "lost_by_broker"
FRONT = "geoloc:jobs:front"  # a sorted set of one member: the highest send number a worker began
SENDS = "geoloc:jobs:sends"  # the counter that numbers sends


def task_id(job_id: str, batch: int, send: int) -> str:
    return f"{job_id}:{batch}:{send}"


def send_number(task_id_: str | None) -> int | None:
    """The send number at the tail of a task id made by task_id(); None for any other id."""
    tail = (task_id_ or "").rpartition(":")[2]
    return int(tail) if tail.isdigit() else None


@dataclass(frozen=True)
class Delivery:
    job_id: str
    batch: int
    send: int  # the number of its last send
    sends: int
    begun: int | None  # the highest send number of it a worker began
    finished: bool

    @property
    def task_id(self) -> str:
        return task_id(self.job_id, self.batch, self.send)

    @property
    def begun_since_sent(self) -> bool:
        return self.begun is not None and self.begun >= self.send


def missing(deliveries: list[Delivery], held: set[str], queue_empty: bool, front_then: int | None) -> list[Delivery]:
    """The unfinished deliveries no worker holds and the queue cannot hold either (`front_then`: the front as it
    was `stall_s` ago); lost if also missing at the previous check."""
    def is_missing(d: Delivery) -> bool:
        if d.finished or d.task_id in held:
            return False
        return queue_empty or (not d.begun_since_sent and front_then is not None and d.send < front_then)

    return [d for d in deliveries if is_missing(d)]


class DeliveryLog:
    """Each batch's sends (with what was sent, to send it again) and begun sends, in the broker's Redis."""

    def __init__(self, client):
        self.redis = client

    @staticmethod
    def _key(job_id: str, field: str) -> str:
        return f"geoloc:job:{job_id}:{field}"

    def sent(self, task: str, kwargs: dict) -> str:
        """Record a send of this batch; the task id to send it with."""
        job_id, batch = kwargs["job_id"], str(kwargs["batch"])
        number = self.redis.incr(SENDS)
        keys = [self._key(job_id, field) for field in ("message", "send", "sends")]
        with self.redis.pipeline() as pipe:
            pipe.hsetnx(keys[0], batch, json.dumps({"task": task, "kwargs": kwargs}))
            pipe.hset(keys[1], batch, number).hincrby(keys[2], batch, 1)
            for key in keys:
                pipe.expire(key, JOB_TTL_S)
            pipe.execute()
        return task_id(job_id, int(batch), number)

    def begun(self, job_id: str, batch: int, task_id_: str | None) -> None:
        number = send_number(task_id_)
        if number is None:  # not sent by a CeleryRunner
            return
        key = self._key(job_id, "begun")
        with self.redis.pipeline() as pipe:
            pipe.zadd(key, {str(batch): number}, gt=True).expire(key, JOB_TTL_S)
            pipe.zadd(FRONT, {"front": number}, gt=True).execute()

    def front(self) -> int | None:
        score = self.redis.zscore(FRONT, "front")
        return int(score) if score is not None else None

    def deliveries(self, job_id: str, finished: set[int]) -> list[Delivery]:
        with self.redis.pipeline() as pipe:
            pipe.hgetall(self._key(job_id, "send")).hgetall(self._key(job_id, "sends"))
            pipe.zrange(self._key(job_id, "begun"), 0, -1, withscores=True)
            send, sends, begun = pipe.execute()
        begun = {batch: int(score) for batch, score in begun}
        return [Delivery(job_id, int(batch), int(number), int(sends.get(batch, 1)), begun.get(batch),
                         int(batch) in finished) for batch, number in send.items()]

    def message(self, job_id: str, batch: int) -> tuple[str, dict]:
        message = json.loads(self.redis.hget(self._key(job_id, "message"), str(batch)))
        return message["task"], message["kwargs"]


class LostBatches:
    """Finds and sends again the lost batches of the open jobs, one check at a time (`check`)."""

    def __init__(self, store: RedisJobStore, broker: Callable[[], tuple[set[str], int]],
                 send: Callable[[str, dict], None], stall_s: float, clock: Callable[[], float] = time.monotonic):
        self.store, self.broker, self.send, self.stall_s, self.clock = store, broker, send, stall_s, clock
        self.deliveries = DeliveryLog(store.redis)
        self._fronts: deque[tuple[float, int | None]] = deque()  # (when, front) at each check
        self._suspects: set[str] = set()

    def _front_then(self, now: float) -> int | None:
        """The front at the latest check made at least stall_s ago (None if none was)."""
        self._fronts.append((now, self.deliveries.front()))
        while len(self._fronts) > 1 and self._fronts[1][0] <= now - self.stall_s:
            self._fronts.popleft()
        when, front = self._fronts[0]
        return front if when <= now - self.stall_s else None

    def check(self) -> list[Delivery]:
        """One check: send again (or fail) what was missing now and at the previous check; what that was."""
        now = self.clock()
        front_then = self._front_then(now)
        found = [d for job in self.store.unfinished()
                 for d in self.deliveries.deliveries(job["id"], self.store.finished_batches(job["id"]))]
        held, queued = self.broker()  # after the deliveries: a batch finished meanwhile is gone from both
        now_missing = missing(found, held, queued == 0, front_then)
        lost = [d for d in now_missing if d.task_id in self._suspects]
        self._suspects = {d.task_id for d in now_missing}
        for delivery in lost:
            try:
                self._again(delivery)
            except Exception:  # noqa: BLE001 - one bad record must not keep the others from being sent
                log.exception("could not send batch %d of job %s again", delivery.batch, delivery.job_id)
        return lost

    def _again(self, delivery: Delivery) -> None:
        task, kwargs = self.deliveries.message(delivery.job_id, delivery.batch)
        if delivery.sends >= MAX_SENDS:
            log.error("batch %d of job %s lost %d times: counted as failed", delivery.batch, delivery.job_id,
                      delivery.sends)
            give_up(self.store, kwargs, LOST_REASON, f"the workers lost this batch {delivery.sends} times (a "
                                                     f"worker killed, or a task past its time limit)")
        else:
            log.warning("batch %d of job %s was lost by the broker: sending it again", delivery.batch,
                        delivery.job_id)
            self.send(task, kwargs)
