"""Batches the broker lost: the rules that find them, their record in a real Redis, and the runner that sends
them through a real Celery app and reads the broker's state (a real worker: tests/test_integration.py)."""

from __future__ import annotations

import json

import pytest

from geoloc import job_store
from geoloc.deliveries import FRONT, LOST_REASON, MAX_SENDS, Delivery, LostBatches, missing, send_number, task_id
from geoloc.settings import Settings
from geoloc.task_queue import QUEUE, CeleryRunner, broker_state, lost_after_s, make_celery

STALL = 60.0


def delivery(batch: int, send: int, begun: int | None = None, finished: bool = False) -> Delivery:
    return Delivery("job", batch, send, 1, begun, finished)


def batches(found: list[Delivery]) -> list[int]:
    return [d.batch for d in found]


def test_a_batch_a_worker_holds_or_finished_is_never_missing():
    found = [delivery(1, 5), delivery(2, 6, finished=True)]
    assert batches(missing(found, {task_id("job", 1, 5)}, queue_empty=True, front_then=99)) == []


def test_with_the_queue_empty_a_batch_nobody_holds_is_missing():
    found = [delivery(1, 5), delivery(2, 6, begun=6)]  # never taken; begun, then dropped without an outcome
    assert batches(missing(found, set(), queue_empty=True, front_then=None)) == [1, 2]


def test_with_tasks_queued_a_batch_is_missing_only_once_the_front_passed_it():
    """The queue is first in, first out: a later send begun long ago means this one was taken, and dropped."""
    assert batches(missing([delivery(1, 5)], set(), queue_empty=False, front_then=7)) == [1]
    assert batches(missing([delivery(1, 5)], set(), queue_empty=False, front_then=5)) == []
    assert batches(missing([delivery(1, 5)], set(), queue_empty=False, front_then=None)) == []
    # begun since its last send: back in the queue after a dead worker, or retrying
    assert batches(missing([delivery(1, 5, begun=5)], set(), queue_empty=False, front_then=7)) == []
    # begun only in an earlier send: this send is as waiting as one never begun
    assert batches(missing([delivery(1, 5, begun=3)], set(), queue_empty=False, front_then=7)) == [1]


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
        lost.deliveries.sent(task, kwargs)
        sent.append(kwargs["batch"])

    lost = LostBatches(redis_store, broker, send, STALL, clock)
    log = lost.deliveries
    job_id = redis_store.create("upload", "news", total=6, batches=3, owner="k1")
    messages = {n: {"job_id": job_id, "batch": n, "collection": "news", "items": [{}, {}]} for n in (1, 2, 3)}
    ids = {n: log.sent("geoloc.index_batch", message) for n, message in messages.items()}
    for n in (1, 3):  # 2 was taken before 3 and dropped; 3 is running
        log.begun(job_id, n, ids[n])
    redis_store.finish(job_id, 1, job_store.Outcome(done=2))
    broker.held, broker.queued = {ids[3]}, 4  # other jobs' tasks wait

    assert lost.check() == []  # the front has not been past 2 for the stall yet
    clock.now = STALL + 1
    assert lost.check() == []  # missing once: a task in passage is missing for a moment
    clock.now = STALL + 10
    assert batches(lost.check()) == [2] and sent == [2]

    broker.held, broker.queued = set(), 0  # 3's worker is gone, the queue drained, and 2 was dropped again
    clock.now += 10
    assert lost.check() == []
    clock.now += 10
    assert batches(lost.check()) == [2, 3] and sent == [2, 2, 3]
    log.begun(job_id, 3, task_id(job_id, 3, log.deliveries(job_id, set())[-1].send))
    redis_store.finish(job_id, 3, job_store.Outcome(done=2))

    clock.now += 10
    assert lost.check() == []
    clock.now += 10
    assert batches(lost.check()) == [2]  # its third send lost: it fails, and the job ends saying why
    job = redis_store.get(job_id)
    assert job["state"] == "failed" and job["reasons"] == {LOST_REASON: 2} and f"lost this batch {MAX_SENDS}" in job["error"]
    assert sent == [2, 2, 3]


def test_the_celery_runner_sends_each_batch_numbered_and_reads_the_broker(redis_store, redis_url):
    settings = Settings(broker_url=redis_url, task_time_limit=20)
    runner = CeleryRunner(make_celery(settings), redis_store, settings.task_time_limit)
    try:
        assert lost_after_s(20) > 25 + 5  # the visibility timeout and a restore interval
        job_id = redis_store.create("upload", "news", total=1, batches=1, owner="k1")
        kwargs = {"job_id": job_id, "batch": 1, "collection": "news", "items": [{}]}
        runner.submit("geoloc.index_batch", kwargs)
        [found] = runner.lost.deliveries.deliveries(job_id, set())
        assert (found.batch, found.sends, found.begun, found.finished) == (1, 1, None, False)
        assert runner.lost.deliveries.message(job_id, 1) == ("geoloc.index_batch", kwargs)
        [queued] = redis_store.redis.lrange(QUEUE, 0, -1)  # the task itself, in the broker's queue, by that id
        assert json.loads(queued)["headers"]["id"] == found.task_id
        assert broker_state(redis_store.redis) == (set(), 1)
    finally:
        runner.close()
    assert not runner._checker.is_alive()
