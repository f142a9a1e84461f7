"""Job batches the broker lost, found from the broker's own state, and sent again (see CeleryRunner).

Celery on Redis can lose a task to a worker killed at the wrong moment (kombu's Redis transport): killed
between taking the task from the queue and recording it as unacknowledged, about a millisecond of each task,
nothing ever delivers it again. And an API stopped while it queues a job's batches leaves the rest unsent.
So a job's batches are recorded before any is sent; each send gets a number from one counter, which is also its
task id's tail; and a worker, on receiving a task (once kombu records it as unacknowledged), records the
highest number taken, per batch and overall (the front). A batch without an outcome is lost when, on two checks
in a row (a task in passage between queue and worker is missing from both for a moment):
* it was never sent, or
* no worker holds its task (kombu's `unacked` hash: tasks running, reserved or waiting to retry), and either
  the queue is empty, or its last send was not taken and the front had passed it `stall_s` ago (the queue is
  first in, first out, so it was taken, and a task handed back after a dead worker is taken again well within
  that).
A lost batch is sent again (its outcome counts once, its writes are idempotent, and a copy that finds the
outcome recorded does nothing) up to MAX_SENDS times in all, then counted as failed with the reason. A task
stopped by its hard time limit is failed by its worker (workers.tasks).
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
FRONT = "geoloc:jobs:front"  # a sorted set of one member: the highest send number a worker took
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
    send: int | None  # the number of its last send (None: never sent)
    sends: int
    taken: int | None  # the highest number of its sends a worker took
    finished: bool

    @property
    def key(self) -> tuple[str, int, int | None]:
        return self.job_id, self.batch, self.send

    @property
    def task_id(self) -> str | None:
        return None if self.send is None else task_id(self.job_id, self.batch, self.send)

    @property
    def taken_since_sent(self) -> bool:
        return self.taken is not None and self.send is not None and self.taken >= self.send


def missing(deliveries: list[Delivery], held: set[str], queue_empty: bool, front_then: int | None) -> list[Delivery]:
    """The unfinished deliveries never sent, or that no worker holds and the queue cannot hold either
    (`front_then`: the front as it was `stall_s` ago); lost if also missing at the previous check."""
    def is_missing(d: Delivery) -> bool:
        if d.finished or d.task_id in held:
            return False
        if d.send is None or queue_empty:
            return True
        return not d.taken_since_sent and front_then is not None and d.send < front_then

    return [d for d in deliveries if is_missing(d)]


class DeliveryLog:
    """Each batch's message (to send it again), sends and sends taken, in the broker's Redis."""

    def __init__(self, client):
        self.redis = client

    @staticmethod
    def _key(job_id: str, field: str) -> str:
        return f"geoloc:job:{job_id}:{field}"

    def planned(self, task: str, batches: list[dict]) -> None:
        """Record a job's batches, before any is sent."""
        with self.redis.pipeline() as pipe:
            for kwargs in batches:
                key = self._key(kwargs["job_id"], "message")
                pipe.hsetnx(key, str(kwargs["batch"]), json.dumps({"task": task, "kwargs": kwargs}))
                pipe.expire(key, JOB_TTL_S)
            pipe.execute()

    def sent(self, job_id: str, batch: int) -> str:
        """Record a send of this batch; the task id to send it with."""
        number = self.redis.incr(SENDS)
        send, sends = self._key(job_id, "send"), self._key(job_id, "sends")
        with self.redis.pipeline() as pipe:
            pipe.hset(send, str(batch), number).hincrby(sends, str(batch), 1)
            pipe.expire(send, JOB_TTL_S).expire(sends, JOB_TTL_S).execute()
        return task_id(job_id, batch, number)

    def taken(self, job_id: str, batch: int, task_id_: str | None) -> None:
        number = send_number(task_id_)
        if number is None:  # not sent by a CeleryRunner
            return
        key = self._key(job_id, "taken")
        with self.redis.pipeline() as pipe:
            pipe.zadd(key, {str(batch): number}, gt=True).expire(key, JOB_TTL_S)
            pipe.zadd(FRONT, {"front": number}, gt=True).execute()

    def front(self) -> int | None:
        score = self.redis.zscore(FRONT, "front")
        return int(score) if score is not None else None

    def deliveries(self, job_id: str, finished: set[int]) -> list[Delivery]:
        with self.redis.pipeline() as pipe:
            pipe.hkeys(self._key(job_id, "message"))
            pipe.hgetall(self._key(job_id, "send")).hgetall(self._key(job_id, "sends"))
            pipe.zrange(self._key(job_id, "taken"), 0, -1, withscores=True)
            planned, send, sends, taken = pipe.execute()
        taken = {batch: int(score) for batch, score in taken}
        return [Delivery(job_id, int(batch), int(send[batch]) if batch in send else None, int(sends.get(batch, 0)),
                         taken.get(batch), int(batch) in finished) for batch in sorted(planned, key=int)]

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
        self._suspects: set[tuple] = set()

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
        lost = [d for d in now_missing if d.key in self._suspects]
        self._suspects = {d.key for d in now_missing}
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
            give_up(self.store, kwargs, LOST_REASON, f"the broker lost this batch {delivery.sends} times (workers "
                                                     f"killed as they took it)")
        else:
            log.warning("batch %d of job %s was %s: sending it again", delivery.batch, delivery.job_id,
                        "never sent" if delivery.send is None else "lost by the broker")
            self.send(task, kwargs)
