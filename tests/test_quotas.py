"""Per-key quotas over the real in-process API: requests per minute and photos per hour, 429 with
Retry-After past them, from settings or the key's own; counted in memory without a broker, and in the
broker's Redis (a real redis-server) with one, so API processes share the counts."""

from __future__ import annotations

from contextlib import ExitStack, contextmanager

import pytest
from fastapi.testclient import TestClient

from geoloc.search_api.app import create_app
from geoloc.search_api.services import build_services
from geoloc.settings import Settings, SettingsError
from tests.api_helpers import expect_error


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@contextmanager
def api(home, embedder, **settings):
    """An API process: its own services and quota counter over a shared data home (keys, gallery)."""
    services = build_services(Settings(home=home, qdrant_url=None, bundle=None, require_keys=True, **settings),
                              embedder)
    try:
        with TestClient(create_app(services=services)) as client:
            yield client, services.keys
    finally:
        services.close()


def photos_of(rows, n):
    return [("photos", (f"{i}.jpg", rows[i % len(rows)]["bytes"], "image/jpeg")) for i in range(n)]


def retry_after(response, at_most: int) -> int:
    wait = int(response.headers["Retry-After"])
    assert 1 <= wait <= at_most
    assert f"try again in {wait} s" in response.json()["error"]["message"]
    return wait


def test_requests_past_the_quota_are_429_with_retry_after(tmp_path, embedder):
    with api(tmp_path, embedder, broker_url=None, key_requests_per_minute=5) as (client, keys):
        _, own = keys.create("reader", ["news"], requests_per_minute=3)
        _, server = keys.create("reader", ["news"])  # the server's quota: 5
        for _ in range(3):
            assert client.get("/v1/collections", headers=bearer(own)).status_code == 200
        refused = client.get("/v1/collections", headers=bearer(own))
        assert expect_error(refused, 429)["code"] == "too_many_requests" and "3 requests per minute" in refused.text
        retry_after(refused, 60)
        assert [client.get("/v1/collections", headers=bearer(server)).status_code for _ in range(6)] == [200] * 5 + [429]


def test_photos_past_the_quota_are_429_and_a_refused_batch_costs_none(tmp_path, embedder, photos):
    rows = photos["news"]
    with api(tmp_path, embedder, broker_url=None) as (client, keys):
        _, admin = keys.create("admin", photos_per_hour=3)
        headers = bearer(admin)
        too_many = client.post("/v1/collections/nosuch/images", files=photos_of(rows, 4), headers=headers)
        assert expect_error(too_many, 429)["code"] == "photo_quota" and "carries 4" in too_many.text
        retry_after(too_many, 3600)
        # the refused four cost nothing: three still fit (the collection is missing: 404, but they were sent)
        expect_error(client.post("/v1/collections/nosuch/images", files=photos_of(rows, 3), headers=headers), 404)
        one = {"photo": ("q.jpg", rows[0]["bytes"], "image/jpeg")}
        assert expect_error(client.post("/v1/locate", files=one, headers=headers), 429)["code"] == "photo_quota"
        assert client.get("/v1/collections", headers=headers).status_code == 200  # requests without photos go on


def test_quotas_are_shared_by_api_processes_through_the_brokers_redis(tmp_path, embedder, redis_url):
    with ExitStack() as stack:
        first, keys = stack.enter_context(api(tmp_path, embedder, broker_url=redis_url, gallery_shared=True))
        second, _ = stack.enter_context(api(tmp_path, embedder, broker_url=redis_url, gallery_shared=True))
        _, token = keys.create("reader", ["news"], requests_per_minute=4)
        statuses = [client.get("/v1/collections", headers=bearer(token)).status_code
                    for client in (first, second, first, second, first, second)]
        assert statuses == [200, 200, 200, 200, 429, 429]
        retry_after(second.get("/v1/collections", headers=bearer(token)), 60)


def test_without_a_broker_each_process_counts_its_own(tmp_path, embedder):
    with ExitStack() as stack:
        first, keys = stack.enter_context(api(tmp_path, embedder, broker_url=None, gallery_shared=True))
        second, _ = stack.enter_context(api(tmp_path, embedder, broker_url=None, gallery_shared=True))
        _, token = keys.create("reader", ["news"], requests_per_minute=2)
        statuses = [client.get("/v1/collections", headers=bearer(token)).status_code
                    for client in (first, second, first, second, first)]
        assert statuses == [200, 200, 200, 200, 429]


@pytest.mark.parametrize("variable, value, problem", [
    ("GEOLOC_KEY_REQUESTS_PER_MINUTE", "0", "must be at least 1"),
    ("GEOLOC_KEY_PHOTOS_PER_HOUR", "lots", "not a valid integer"),
])
def test_quota_settings_are_validated(monkeypatch, tmp_path, variable, value, problem):
    monkeypatch.setenv("GEOLOC_HOME", str(tmp_path))
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=f"{variable}='{value}': {problem}"):
        Settings()


def test_default_quotas_leave_room_for_normal_use():
    defaults = Settings.model_fields
    assert defaults["key_requests_per_minute"].default >= 600 and defaults["key_photos_per_hour"].default >= 5000
