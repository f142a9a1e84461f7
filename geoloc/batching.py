"""Run the items of concurrent requests through one call together: the API's micro-batcher for the encoder.

Each request submits its items (its decoded photos) and gets back its own slice of the results, in its order.
A thread takes the requests in arrival order and runs them together, at most `max_items` items per call (a
request larger than that runs alone, whole); with `lanes` > 1, that many threads do so side by side, each taking
the next requests when it is free. A request that finds nothing else queued while traffic is light
(the last call held a single request) runs at once, so a lone client never waits for company. When requests
arrive together, the thread waits up to `wait_s` for as many as the last call held, then runs what it has, so
a burst costs one forward pass rather than one per request. A call that fails is made again request by request,
so one bad photo fails only its own request.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field


@dataclass
class _Request:
    items: Sequence
    future: Future = field(default_factory=Future)


class Batcher:
    """`run(items)` -> one result per item, sliceable (a list, an array); called on the batcher's own threads."""

    def __init__(self, run: Callable[[list], Sequence], max_items: int = 16, wait_s: float = 0.005,
                 name: str = "geoloc-batcher", lanes: int = 1):
        if max_items < 1 or wait_s < 0 or lanes < 1:
            raise ValueError("max_items and lanes must be at least 1, wait_s at least 0")
        self._run, self.max_items, self.wait_s = run, max_items, wait_s
        self._queue: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._last_requests = 1  # requests in the last call: how many to wait for when several arrive together
        names = [f"{name}-{lane}" for lane in range(lanes)] if lanes > 1 else [name]
        self._threads = [threading.Thread(target=self._serve, name=each, daemon=True) for each in names]
        for thread in self._threads:
            thread.start()

    def submit(self, items: Sequence) -> Future:
        """A future of `items`' results, in their order."""
        request = _Request(list(items))
        with self._cond:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._queue.append(request)
            self._cond.notify()
        return request.future

    def __call__(self, items: Sequence) -> Sequence:
        """`items`' results, run together with whatever else is queued; raises what running them raised."""
        return self.submit(items).result()

    def close(self) -> None:
        """Answer what is queued, then stop the threads."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()

    def _serve(self) -> None:
        while (batch := self._gather()) is not None:
            self._answer(batch)

    def _gather(self) -> list[_Request] | None:
        """The next requests to run together, or None once closed with nothing queued."""
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if not self._queue:
                return None
            batch = [self._queue.popleft()]
            size = len(batch[0].items)
            deadline = time.monotonic() + self.wait_s
            while size < self.max_items:
                if self._queue:
                    if size + len(self._queue[0].items) > self.max_items:
                        break
                    batch.append(self._queue.popleft())
                    size += len(batch[-1].items)
                    continue
                left = deadline - time.monotonic()
                if len(batch) >= self._last_requests or left <= 0 or self._closed:
                    break
                self._cond.wait(left)
            self._last_requests = len(batch)
            return batch

    def _answer(self, batch: list[_Request]) -> None:
        try:
            results = self._run([item for request in batch for item in request.items])
        except Exception as exc:
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
            else:  # find whose items failed: each request on its own
                for request in batch:
                    self._answer([request])
            return
        start = 0
        for request in batch:
            request.future.set_result(results[start:start + len(request.items)])
            start += len(request.items)
