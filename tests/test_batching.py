"""The encoder's micro-batcher (geoloc.batching) and what a server loads before its first request.

Behaviour only, never the clock: each request gets its own results in its order, requests that queue together
run together within the item bound, one bad photo fails only its own request, a lone request never waits for
company, a wait for company ends, lanes run side by side, and a started server has its model, place names and
threads ready."""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from geoloc import places
from geoloc.batching import Batcher
from geoloc.search_api.app import create_app
from geoloc.search_api.services import build_services
from geoloc.settings import Settings
from tests.api_helpers import photo_file

FOREVER = 3600.0  # a wait no test could sit through: reaching the end of one proves it was not waited


class Recorder:
    """run(items) that doubles numbers, records each call's items, and can be held until released."""

    def __init__(self, hold: bool = False):
        self.calls: list[list] = []
        self.started = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()

    def __call__(self, items: list) -> list:
        self.calls.append(list(items))
        self.started.set()
        self.release.wait()
        if "bad" in items:
            raise ValueError("a bad photo")
        return [2 * x for x in items]


@pytest.fixture
def batcher_of():
    made = []

    def make(run, **options) -> Batcher:
        made.append(Batcher(run, **options))
        return made[-1]

    yield make
    for batcher in made:
        batcher.close()


def test_each_request_gets_its_own_results_in_order(batcher_of):
    batcher = batcher_of(Recorder(), max_items=16, wait_s=0.01)
    requests = [list(range(i, i + 1 + i % 4)) for i in range(40)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(batcher, requests))
    assert answers == [[2 * x for x in request] for request in requests]


def test_requests_queued_while_the_model_runs_go_through_it_together(batcher_of):
    run = Recorder(hold=True)
    batcher = batcher_of(run, max_items=8, wait_s=0)
    first = batcher.submit([0])
    assert run.started.wait(30)
    queued = [batcher.submit([i, i + 100]) for i in range(1, 7)]  # 12 items behind the running call
    run.release.set()
    assert first.result(30) == [0]
    assert [f.result(30) for f in queued] == [[2 * i, 2 * i + 200] for i in range(1, 7)]
    assert run.calls[1:] == [[1, 101, 2, 102, 3, 103, 4, 104], [5, 105, 6, 106]]  # arrival order, <= 8 items


def test_a_request_larger_than_the_bound_runs_alone_and_whole(batcher_of):
    run = Recorder(hold=True)
    batcher = batcher_of(run, max_items=4, wait_s=0)
    batcher.submit([0])
    assert run.started.wait(30)
    small, large = batcher.submit([1]), batcher.submit(list(range(10, 20)))
    run.release.set()
    assert large.result(30) == [2 * x for x in range(10, 20)] and small.result(30) == [2]
    assert run.calls[1:] == [[1], list(range(10, 20))]


def test_a_bad_photo_fails_only_its_own_request(batcher_of):
    run = Recorder(hold=True)
    batcher = batcher_of(run, max_items=16, wait_s=0)
    batcher.submit([0])
    assert run.started.wait(30)
    good, bad, other = batcher.submit([1, 2]), batcher.submit([3, "bad"]), batcher.submit([4])
    run.release.set()
    assert good.result(30) == [2, 4] and other.result(30) == [8]
    with pytest.raises(ValueError, match="a bad photo"):
        bad.result(30)
    assert run.calls[1] == [1, 2, 3, "bad", 4]  # tried together first, then each on its own


def test_a_lone_request_does_not_wait_for_company(batcher_of):
    batcher = batcher_of(Recorder(), max_items=16, wait_s=FOREVER)
    assert [batcher([i]) for i in range(3)] == [[0], [2], [4]]


def test_after_a_burst_the_batcher_waits_for_as_many_then_runs_them_together(batcher_of):
    run = Recorder(hold=True)
    batcher = batcher_of(run, max_items=16, wait_s=FOREVER)
    batcher.submit([0])
    assert run.started.wait(30)
    burst = [batcher.submit([i]) for i in (1, 2, 3)]
    run.release.set()
    assert [f.result(30) for f in burst] == [[2], [4], [6]]  # one call of three: the next waits for three
    first = batcher.submit([10])
    rest = [batcher.submit([11]), batcher.submit([12])]
    assert first.result(30) == [20] and [f.result(30) for f in rest] == [[22], [24]]
    assert run.calls == [[0], [1, 2, 3], [10, 11, 12]]


def test_a_wait_for_company_ends_at_its_bound(batcher_of):
    run = Recorder(hold=True)
    batcher = batcher_of(run, max_items=16, wait_s=0.05)
    batcher.submit([0])
    assert run.started.wait(30)
    pair = [batcher.submit([1]), batcher.submit([2])]
    run.release.set()
    assert [f.result(30) for f in pair] == [[2], [4]]
    assert batcher.submit([3]).result(30) == [6]  # it waited for a second request that never came, then ran
    assert run.calls[-1] == [3]


def test_close_answers_what_is_queued_then_refuses(batcher_of):
    run = Recorder(hold=True)
    batcher = Batcher(run, max_items=2, wait_s=0)
    batcher.submit([0])
    assert run.started.wait(30)
    queued = [batcher.submit([i]) for i in range(1, 5)]
    closing = threading.Thread(target=batcher.close)
    closing.start()
    run.release.set()
    closing.join(30)
    assert [f.result(0) for f in queued] == [[2], [4], [6], [8]]
    with pytest.raises(RuntimeError):
        batcher.submit([5])


def test_lanes_run_calls_side_by_side_and_close_together(batcher_of):
    running, release = threading.Semaphore(0), threading.Event()

    def run(items: list) -> list:
        running.release()
        assert release.wait(30)
        return [2 * x for x in items]

    batcher = Batcher(run, max_items=16, wait_s=0, lanes=2)
    first = batcher.submit([1])
    assert running.acquire(timeout=30)
    second = batcher.submit([2])  # the first call is held: only a second lane can start this one
    assert running.acquire(timeout=30)
    release.set()
    assert (first.result(30), second.result(30)) == ([2], [4])
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(batcher, [[i] for i in range(20)])) == [[2 * i] for i in range(20)]
    batcher.close()
    with pytest.raises(RuntimeError):
        batcher.submit([5])


def test_arrays_are_sliced_per_request(batcher_of):
    batcher = batcher_of(lambda items: np.stack([np.full(3, x, np.float32) for x in items]), wait_s=0.01)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(batcher, [[1, 2], [3], [4, 5, 6]]))
    assert [a.shape for a in answers] == [(2, 3), (1, 3), (3, 3)] and answers[2][2, 0] == 6


# ------------------------------------------------------------------------------------------ the API


def test_concurrent_locates_each_get_the_answer_a_lone_one_gets(api, photos):
    client, reader = api["client"], api["reader"]
    rows = photos["spare"][:4]
    alone = [client.post("/v1/locate", files=photo_file(row), headers=reader).json() for row in rows]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda row: client.post("/v1/locate", files=photo_file(row), headers=reader).json(),
                                 rows * 3))
    for i, answer in enumerate(together):
        expected = alone[i % len(rows)]
        assert answer["neighbours"][0]["id"] == expected["neighbours"][0]["id"]
        assert answer["lat"] == pytest.approx(expected["lat"], abs=1e-6)
    similar = client.post("/v1/similar", files=photo_file(rows[0]), headers=reader).json()
    assert similar["neighbours"][0]["id"] == alone[0]["neighbours"][0]["id"]


@pytest.mark.parametrize("threads, lanes, per_lane", [(1, 2, 1), (2, 2, 1), (2, 1, 2)])
def test_a_started_server_has_loaded_what_a_locate_needs(tmp_path, embedder, monkeypatch, threads, lanes, per_lane):
    monkeypatch.setattr(places, "_gazetteer", None)  # as in a fresh process
    settings = Settings(home=tmp_path, broker_url=None, qdrant_url=None, bundle=None, require_keys=False,
                        torch_threads=threads, serve_lanes=lanes)
    services = build_services(settings, embedder)
    try:
        with TestClient(create_app(services=services)) as client:
            assert places._gazetteer is not None  # before any request
            ready = client.get("/readyz")
            assert ready.status_code == 200 and ready.json()["checks"]["model"] == "ok"
            seen = []
            worker = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
            worker.start()
            worker.join()
            assert seen == [per_lane]  # the server's lanes share the threads it was given
    finally:
        services.close()
        torch.set_num_threads(1)


def test_a_model_that_cannot_load_leaves_the_server_up_and_not_ready(tmp_path):
    settings = Settings(home=tmp_path, broker_url=None, qdrant_url=None, bundle=str(tmp_path / "no-such-bundle"),
                        require_keys=False, torch_threads=1)
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["model"].startswith("failed:")


def test_the_model_warms_up_on_the_thread_requests_use_and_a_later_load_clears_a_failure(tmp_path, embedder):
    settings = Settings(home=tmp_path, broker_url=None, qdrant_url=None, bundle=None, require_keys=False,
                        torch_threads=1)
    services = build_services(settings, embedder)
    try:
        services.start()
        assert list(services._batchers) == [embedder.model_id]  # the warm-up ran through the requests' batcher
        services.model_state = "failed: the disk was away"
        from PIL import Image

        services.features(embedder, [Image.new("RGB", (64, 48))])
        assert services.model_state == "ok"  # what /readyz reports once a request has run the model
    finally:
        services.close()


def test_a_large_query_jpeg_is_decoded_at_a_reduced_scale_that_embeds_as_the_full_one(embedder):
    from PIL import Image

    from geoloc.embedding import l2_normalise
    from geoloc.ingest.images import open_image, to_rgb
    from geoloc.search_api.routes.common import QUERY_DECODE_SIDE
    from tests.services import DATA, manifest_rows

    photo = Image.open(DATA / "images" / manifest_rows(1)[0]["filename"]).convert("RGB").resize((2048, 1536))
    jpeg, png = io.BytesIO(), io.BytesIO()
    photo.save(jpeg, "JPEG", quality=90)
    photo.save(png, "PNG")
    full, reduced = to_rgb(open_image(jpeg.getvalue())), to_rgb(open_image(jpeg.getvalue(), min_side=QUERY_DECODE_SIDE))
    assert full.size == (2048, 1536) and reduced.size == (1024, 768)
    assert open_image(png.getvalue(), min_side=QUERY_DECODE_SIDE).size == (2048, 1536)  # JPEG only
    a, b = l2_normalise(embedder.features([full, reduced]))
    assert float(a @ b) > 0.995
