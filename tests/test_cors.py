"""GEOLOC_CORS_ORIGINS: the browser origins whose pages may call the API; none by default."""

from __future__ import annotations

from contextlib import ExitStack

import pytest
from fastapi.testclient import TestClient

from geoloc.search_api.app import create_app
from geoloc.search_api.services import build_services
from geoloc.settings import Settings, SettingsError

PAGE = "https://maps.example.org"


@pytest.fixture
def client(tmp_path, embedder):
    """An app over an empty data home with the given settings."""
    with ExitStack() as stack:
        def make(**values) -> TestClient:
            settings = Settings(home=tmp_path, broker_url=None, qdrant_url=None, **values)
            services = build_services(settings, embedder)
            stack.callback(services.close)
            return stack.enter_context(TestClient(create_app(services=services)))

        yield make


def preflight(api: TestClient, origin: str):
    return api.options("/v1/locate", headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                               "Access-Control-Request-Headers": "authorization"})


def test_listed_origins_may_call_the_api_and_read_its_headers(client):
    api = client(cors_origins=f" {PAGE}, http://localhost:8080 ")
    allowed = preflight(api, PAGE)
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == PAGE
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    answer = api.get("/healthz", headers={"Origin": "http://localhost:8080"})
    assert answer.headers["access-control-allow-origin"] == "http://localhost:8080"
    assert "Retry-After" in answer.headers["access-control-expose-headers"]
    assert "access-control-allow-origin" not in preflight(api, "https://elsewhere.example").headers
    refused = api.get("/v1/collections", headers={"Origin": PAGE})  # a refusal is readable by the page too
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == PAGE


def test_no_origin_by_default(client):
    api = client()
    assert "access-control-allow-origin" not in api.get("/healthz", headers={"Origin": PAGE}).headers
    assert "access-control-allow-origin" not in preflight(api, PAGE).headers


@pytest.mark.parametrize("value", ["https://maps.example.org/", "maps.example.org", "ftp://x.org", "http://x.org/a"])
def test_a_bad_origin_stops_startup_naming_the_variable(tmp_path, monkeypatch, value):
    monkeypatch.setenv("GEOLOC_CORS_ORIGINS", f"{PAGE},{value}")
    with pytest.raises(SettingsError, match="GEOLOC_CORS_ORIGINS=.*not an origin"):
        Settings(home=tmp_path)
