"""Batches the broker lost: the rules that find them, their record in a real Redis, the runner that sends them
through a real Celery app and reads the broker's state, and the worker's signal handlers (a real worker:
tests/test_integration.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from geoloc import job_store
from geoloc.deliveries import (FRONT, LOST_REASON, MAX_SENDS, Delivery, DeliveryLog, LostBatches, missing, send_number,
                               task_id)
from geoloc.settings import Settings
from geoloc.task_queue import QUEUE, CeleryRunner, broker_state, lost_after_s, make_celery

STALL = 60.0


def delivery(batch: int, send: int | None, taken: int | None = None, finished: bool = False) -> Delivery:
    return Delivery("job", batch, send, 1, taken, finished)


def batches(found: list[Delivery]) -> list[int]:
    return [d.batch for d in found]


def test_a_batch_a_worker_holds_or_finished_is_never_missing():
    found = [delivery(1, 5), delivery(2, 6, finished=True)]
    assert batches(missing(found, {task_id("job", 1, 5)}, queue_empty=True, front_then=99)) == []


def test_with_the_queue_empty_a_batch_nobody_holds_is_missing():
    found = [delivery(1, 5), delivery(2, 6, taken=6)]  # never taken; taken, then dropped without an outcome
    assert batches(missing(found, set(), queue_empty=True, front_then=None)) == [1, 2]


def test_a_batch_never_sent_is_missing():
    assert batches(missing([delivery(1, None)], set(), queue_empty=False, front_then=None)) == [1]


def test_with_tasks_queued_a_batch_is_missing_only_once_the_front_passed_it():
    """The queue is first in, first out: a later send taken long ago means this one was taken, and dropped."""
    assert batches(missing([delivery(1, 5)], set(), queue_empty=False, front_then=7)) == [1]
    assert batches(missing([delivery(1, 5)], set(), queue_empty=False, front_then=5)) == []
    assert batches(missing([delivery(1, 5)], set(), queue_empty=False, front_then=None)) == []
    # taken since its last send: back in the queue after a dead worker, or retrying
    assert batches(missing([delivery(1, 5, taken=5)], set(), queue_empty=False, front_then=7)) == []
    # taken only in an earlier send: this send is as waiting as one never taken
    assert batches(missing([delivery(1, 5, taken=3)], set(), queue_empty=False, front_then=7)) == [1]


def test_send_numbers_ride_on_task_ids():
    assert send_number(task_id("0b7e-uuid", 3, 42)) == 42
    assert send_number("a-celery-uuid") is None and send_number(None) is None


class Clock:
    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class Broker:
    """What the checker reads of the broker, set by the test: task ids held by workers, tasks queued."""

    def __init__(self):
        self.held: set[str] = set()
        self.queued = 0

    def __call__(self) -> tuple[set[str], int]:
        return self.held, self.queued


@pytest.fixture()
def redis_store(redis_url):
    import redis

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.delete(job_store.RedisJobStore.OPEN, FRONT, QUEUE, "unacked")
    yield job_store.RedisJobStore(client)
    client.close()


def test_lost_batches_are_sent_again_then_failed(redis_store):
    clock, broker, sent = Clock(), Broker(), []

    def send(task: str, kwargs: dict) -> None:  # as CeleryRunner.submit records a send
        lost.deliveries.sent(kwargs["job_id"], kwargs["batch"])
        sent.append(kwargs["batch"])

    lost = LostBatches(redis_store, broker, send, STALL, clock)
    log = lost.deliveries
    job_id = redis_store.create("upload", "news", total=8, batches=4, owner="k1")
    messages = {n: {"job_id": job_id, "batch": n, "collection": "news", "items": [{}, {}]} for n in (1, 2, 3, 4)}
    log.planned("geoloc.index_batch", list(messages.values()))
    ids = {n: log.sent(job_id, n) for n in (1, 2, 3)}  # 4: the API stopped before sending it
    for n in (1, 3):  # 2 was taken before 3 and dropped; 3 is running
        log.taken(job_id, n, ids[n])
    redis_store.finish(job_id, 1, job_store.Outcome(done=2))
    broker.held, broker.queued = {ids[3]}, 4  # other jobs' tasks wait

    assert lost.check() == []  # 4 missing once: a task in passage is missing for a moment
    clock.now = STALL / 2
    assert batches(lost.check()) == [4] and sent == [4]  # 2: the front has not been past it for the stall yet
    clock.now = STALL + 1
    assert lost.check() == []  # 2 missing once
    clock.now = STALL + 10
    assert batches(lost.check()) == [2] and sent == [4, 2]
    log.taken(job_id, 4, task_id(job_id, 4, log.deliveries(job_id, set())[-1].send))
    redis_store.finish(job_id, 4, job_store.Outcome(done=2))

    broker.held, broker.queued = set(), 0  # 3's worker is gone, the queue drained, and 2 was dropped again
    clock.now += 10
    assert lost.check() == []
    clock.now += 10
    assert batches(lost.check()) == [2, 3] and sent == [4, 2, 2, 3]
    log.taken(job_id, 3, task_id(job_id, 3, log.deliveries(job_id, set())[2].send))
    redis_store.finish(job_id, 3, job_store.Outcome(done=2))

    clock.now += 10
    assert lost.check() == []
    clock.now += 10
    assert batches(lost.check()) == [2]  # its third send lost: it fails, and the job ends saying why
    job = redis_store.get(job_id)
    assert job["state"] == "failed" and job["reasons"] == {LOST_REASON: 2}
    assert f"lost this batch {MAX_SENDS} times" in job["error"] and sent == [4, 2, 2, 3]


def test_the_celery_runner_sends_numbered_tasks_and_reads_what_workers_hold(redis_store, redis_url):
    settings = Settings(broker_url=redis_url, task_time_limit=20)
    app = make_celery(settings)
    runner = CeleryRunner(app, redis_store, settings.task_time_limit)
    try:
        assert lost_after_s(20) == 20 + 2 * 5 + 5  # the visibility timeout, a restore interval and a margin
        job_id = redis_store.create("upload", "news", total=1, batches=1, owner="k1")
        kwargs = {"job_id": job_id, "batch": 1, "collection": "news", "items": [{}]}
        runner.submit("geoloc.index_batch", [kwargs])
        [found] = runner.lost.deliveries.deliveries(job_id, set())
        assert (found.batch, found.sends, found.taken, found.finished) == (1, 1, None, False)
        assert runner.lost.deliveries.message(job_id, 1) == ("geoloc.index_batch", kwargs)
        assert broker_state(redis_store.redis) == (set(), 1)
        with app.connection_for_read() as connection:  # a consumer takes it, as a worker does, unacknowledged
            queue = connection.SimpleQueue(QUEUE)
            message = queue.get(timeout=5)
            assert message.headers["id"] == found.task_id
            assert broker_state(redis_store.redis) == ({found.task_id}, 0)
            message.ack()
            queue.close()
    finally:
        runner.close()
    assert not runner._checker.is_alive()


def test_the_worker_records_what_it_takes_and_fails_a_batch_past_its_hard_time_limit(redis_store, monkeypatch):
    from celery.exceptions import TimeLimitExceeded
    from celery.signals import task_failure, task_received

    from geoloc.workers import tasks

    monkeypatch.setattr(tasks, "_main_process_store", lambda: redis_store)
    job_id = redis_store.create("upload", "news", total=2, batches=1, owner="k1")
    kwargs = {"job_id": job_id, "batch": 1, "collection": "news", "items": [{}, {}]}
    log = DeliveryLog(redis_store.redis)
    log.planned("geoloc.index_batch", [kwargs])
    sent = log.sent(job_id, 1)
    task_received.send(sender=None, request=SimpleNamespace(id=sent, kwargs=kwargs))
    assert log.deliveries(job_id, set())[0].taken_since_sent and log.front() == send_number(sent)

    task_failure.send(sender=None, task_id=sent, exception=TimeLimitExceeded(20), args=(), kwargs=kwargs,
                      traceback=None, einfo=None)
    job = redis_store.get(job_id)
    assert (job["state"], job["reasons"]) == ("failed", {"time_limit": 2}) and "GEOLOC_TASK_TIME_LIMIT" in job["error"]
