"""Batches the broker lost: the rules that find them, their record in a real Redis, and the runner that sends
them again through a real Celery app (the worker side is in tests/test_integration.py)."""

from __future__ import annotations

import json

import pytest

from geoloc import job_store
from geoloc.deliveries import LOST_REASON, MAX_SENDS, Delivery, DeliveryLog, lost, send_lost_again
from geoloc.settings import Settings
from geoloc.task_queue import QUEUE, CeleryRunner, lost_after_s, make_celery

STALL = 60.0
NOW = 1000.0


def delivery(batch: int, sent_at: float, begun_at: float | None = None, finished: bool = False) -> Delivery:
    return Delivery("job", batch, sent_at, 1, begun_at, finished)


def batches(found: list[Delivery]) -> list[int]:
    return [d.batch for d in found]


def test_a_batch_begun_and_then_silent_is_lost_after_the_stall():
    found = [delivery(1, 0, begun_at=NOW - STALL - 1), delivery(2, 0, begun_at=NOW - STALL + 1),
             delivery(3, 0, begun_at=NOW - STALL - 1, finished=True)]
    assert batches(lost(found, None, NOW, STALL)) == [1]


def test_a_batch_overtaken_by_one_sent_after_it_is_lost():
    """The queue is first in, first out: a later batch begun long ago means this one was taken, and dropped."""
    old = NOW - STALL - 10
    overtaken = [delivery(1, old), delivery(2, old + 1, begun_at=old + 2, finished=True)]
    assert batches(lost(overtaken, None, NOW, STALL)) == [1]
    recently = [delivery(1, old), delivery(2, old + 1, begun_at=NOW - 1)]  # the queue may hold it still
    assert batches(lost(recently, None, NOW, STALL)) == []
    sent_before = [delivery(1, old + 5), delivery(2, old, begun_at=old + 1, finished=True)]  # the other one was sent first
    assert batches(lost(sent_before, None, NOW, STALL)) == []


def test_a_waiting_batch_is_lost_only_if_the_workers_went_idle_after_it_was_sent():
    old = NOW - STALL - 10
    assert batches(lost([delivery(1, old)], old + 5, NOW, STALL)) == [1]  # workers ran after it, then stopped
    assert batches(lost([delivery(1, old)], old - 5, NOW, STALL)) == []  # no worker since: still queued
    assert batches(lost([delivery(1, old)], NOW - 1, NOW, STALL)) == []  # the workers are busy
    assert batches(lost([delivery(1, NOW - 1)], NOW - STALL - 20, NOW, STALL)) == []  # just sent


def test_a_begin_before_the_last_send_does_not_count():
    resent = delivery(1, NOW - STALL - 10, begun_at=NOW - STALL - 20)
    assert not resent.begun
    assert batches(lost([resent], None, NOW, STALL)) == []


class Clock:
    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def redis_store(redis_url):
    import redis

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.delete(job_store.RedisJobStore.OPEN, DeliveryLog.BUSY, QUEUE)
    yield job_store.RedisJobStore(client)
    client.close()


def test_lost_batches_are_sent_again_then_failed(redis_store):
    clock = Clock()
    deliveries = DeliveryLog(redis_store.redis, clock)
    job_id = redis_store.create("upload", "news", total=6, batches=3, owner="k1")
    messages = {n: {"job_id": job_id, "batch": n, "collection": "news", "items": [{}, {}]} for n in (1, 2, 3)}
    for message in messages.values():
        deliveries.sent("geoloc.index_batch", message)
    clock.now = 1
    for n in (1, 3):
        deliveries.begun(job_id, n)
    redis_store.finish(job_id, 1, job_store.Outcome(done=2))
    deliveries.busy()

    sent = []
    clock.now = 30
    assert send_lost_again(deliveries, redis_store, lambda *message: sent.append(message), STALL) == 0
    clock.now = 100  # 2 was taken before 3 and never begun; 3 was begun and never ended
    assert send_lost_again(deliveries, redis_store, lambda *message: sent.append(message), STALL) == 2
    assert sorted(sent, key=lambda m: m[1]["batch"]) == [("geoloc.index_batch", messages[2]),
                                                         ("geoloc.index_batch", messages[3])]

    for _ in range(MAX_SENDS - 1):  # 2 is sent again and lost each time, while the workers run on
        deliveries.sent("geoloc.index_batch", messages[2])
    clock.now = 150
    deliveries.busy()
    clock.now = 250
    sent.clear()
    send_lost_again(deliveries, redis_store, lambda *message: sent.append(message), STALL)
    job = redis_store.get(job_id)
    assert job["reasons"] == {LOST_REASON: 2} and job["failed"] == 2 and "lost this batch" in job["error"]
    assert [m[1]["batch"] for m in sent] == [3]  # only the batch under its limit goes again


def test_the_celery_runner_records_each_batch_it_sends(redis_store, redis_url):
    settings = Settings(broker_url=redis_url, task_time_limit=20)
    runner = CeleryRunner(make_celery(settings), redis_store, settings.task_time_limit)
    try:
        assert runner.lost_after_s == lost_after_s(20) > 25 + 5  # the visibility timeout and a restore interval
        job_id = redis_store.create("upload", "news", total=1, batches=1, owner="k1")
        kwargs = {"job_id": job_id, "batch": 1, "collection": "news", "items": [{}]}
        runner.submit("geoloc.index_batch", kwargs)
        [found] = runner.deliveries.deliveries(job_id, set())
        assert (found.batch, found.sends, found.begun_at, found.finished) == (1, 1, None, False)
        assert runner.deliveries.message(job_id, 1) == ("geoloc.index_batch", kwargs)
        [queued] = redis_store.redis.lrange(QUEUE, 0, -1)  # the message itself is in the broker's queue
        assert json.loads(queued)["headers"]["task"] == "geoloc.index_batch"
    finally:
        runner.close()
    assert not runner._checker.is_alive()
