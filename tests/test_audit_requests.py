"""The audit log of the real in-process API: one line per request made with a key, written once, refused
requests included whatever refused them (a bad key, a scope, a missing route, the body limit, validation,
a quota, an unreachable service), with the key id, endpoint, status and reason; never the photo."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient

from geoloc.search_api.app import create_app
from geoloc.search_api.services import build_services
from geoloc.settings import Settings
from tests.services import free_port

PHOTO_NAME = "private-name-of-the-photo.jpg"
MAX_BATCH = 2


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def audited(tmp_path_factory, photos, embedder):
    settings = Settings(home=tmp_path_factory.mktemp("audit-home"), broker_url=None, qdrant_url=None, bundle=None,
                        gallery_shared=False, require_keys=True, max_photo_bytes=256 << 10,
                        max_batch_photos=MAX_BATCH)
    services = build_services(settings, embedder)
    keys = services.keys
    made = {name: keys.create(*args, **options) for name, args, options in [
        ("admin", ("admin",), {}), ("reader", ("reader", ["news"]), {}), ("revoked", ("reader", ["news"]), {}),
        ("expiring", ("reader", ["news"]), {"expires": datetime.now(timezone.utc) + timedelta(seconds=2)}),
        ("hasty", ("reader", ["news"]), {"requests_per_minute": 1})]}
    keys.revoke(made["revoked"][0].id)
    try:
        with TestClient(create_app(services=services)) as client:
            assert client.post("/v1/collections", json={"name": "news"},
                               headers=bearer(made["admin"][1])).status_code == 201
            yield {"client": client, "log": settings.audit_path, "ids": {n: k.id for n, (k, _) in made.items()},
                   "as": {n: bearer(token) for n, (_, token) in made.items()}, "photo": photos["news"][0]}
    finally:
        services.close()


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def one_line(audited, request) -> dict:
    """Make the request; exactly one new line must have been written, before the response came back."""
    before = len(lines(audited["log"]))
    response = request()
    after = lines(audited["log"])
    assert len(after) == before + 1, (response.status_code, after[before:])
    entry = after[-1]
    assert entry["status"] == response.status_code
    if response.status_code >= 400:
        assert entry["reason"] == response.json()["error"]["code"] and entry["message"]
    return entry


def test_every_refusal_is_one_line_with_its_key_endpoint_status_and_reason(audited):
    client, who, ids = audited["client"], audited["as"], audited["ids"]
    photo = {"photo": (PHOTO_NAME, audited["photo"]["bytes"], "image/jpeg")}
    time.sleep(2.1)  # the expiring key has expired
    cases = [  # (request, key id logged, endpoint, status, reason)
        (lambda: client.get("/v1/collections", headers=who["reader"]), ids["reader"], "list_collections", 200, None),
        (lambda: client.get("/v1/collections", headers=bearer("gk_0123456789ab_wrong")), None, "list_collections",
         401, "unauthorized"),
        (lambda: client.get("/v1/collections", headers={"Authorization": "Basic dXNlcjpwYXNz"}), None,
         "list_collections", 401, "unauthorized"),
        (lambda: client.get("/v1/collections", headers=who["revoked"]), ids["revoked"], "list_collections", 401,
         "unauthorized"),
        (lambda: client.get("/v1/collections", headers=who["expiring"]), ids["expiring"], "list_collections", 401,
         "unauthorized"),
        (lambda: client.delete("/v1/collections/news", headers=who["reader"]), ids["reader"], "delete_collection",
         403, "forbidden"),
        (lambda: client.post("/v1/locate", files=photo, data={"collections": "secret"}, headers=who["reader"]),
         ids["reader"], "locate", 403, "forbidden"),
        (lambda: client.get("/v1/jobs/nosuch", headers=who["admin"]), ids["admin"], "get_job", 404, "no_job"),
        (lambda: client.get("/v1/nothing", headers=who["admin"]), ids["admin"], None, 404, "not_found"),
        (lambda: client.post("/v1/collections/news/images", content=b"x" * (3 << 20), headers={
            **who["admin"], "content-type": "multipart/form-data; boundary=x"}), ids["admin"], None, 413, "too_large"),
        (lambda: client.post("/v1/collections/news/images", files=[("photos", photo["photo"])] * (MAX_BATCH + 1),
                             headers=who["admin"]), ids["admin"], "upload_images", 413, "too_many_photos"),
        (lambda: client.post("/v1/locate", files=photo, data={"k": "0"}, headers=who["reader"]), ids["reader"],
         "locate", 422, "invalid_request"),
        (lambda: client.post("/v1/locate", data={"k": "3"}, headers=who["reader"]), ids["reader"], "locate", 422,
         "invalid_request"),
        (lambda: client.post("/v1/locate", files=photo, headers=who["reader"]), ids["reader"], "locate", 409,
         "not_ready"),
        (lambda: client.get("/v1/collections", headers=who["hasty"]), ids["hasty"], "list_collections", 200, None),
        (lambda: client.get("/v1/collections", headers=who["hasty"]), ids["hasty"], "list_collections", 429,
         "too_many_requests"),
    ]
    for request, key, endpoint, status, reason in cases:
        entry = one_line(audited, request)
        assert (entry["key"], entry["endpoint"], entry["status"], entry.get("reason")) == (key, endpoint, status,
                                                                                          reason), entry
        assert entry["outcome"] == ("answered" if status < 400 else "refused") and entry["time"]
    entries = lines(audited["log"])
    assert [e for e in entries if e["status"] == 401 and e["key"] is None][0]["presented"] == "0123456789ab"
    assert "expired" in [e for e in entries if e["key"] == ids["expiring"]][-1]["message"]
    assert "revoked" in [e for e in entries if e["key"] == ids["revoked"]][-1]["message"]
    assert [e for e in entries if e["status"] == 403 and e["endpoint"] == "locate"][-1]["collections"] == ["secret"]
    assert [e for e in entries if e["endpoint"] == "delete_collection"][-1]["collections"] == ["news"]
    assert [e for e in entries if e["status"] == 409][-1]["photos"] == 1


def test_the_log_never_holds_the_photo_nor_a_secret(audited):
    client, who = audited["client"], audited["as"]
    row = audited["photo"]
    one_line(audited, lambda: client.post("/v1/similar", headers=who["reader"],
                                          files={"photo": (PHOTO_NAME, row["bytes"], "image/jpeg")}))
    text = audited["log"].read_text()
    assert PHOTO_NAME not in text and row["sha256"] not in text and row["filename"] not in text
    assert "wrong" not in text and "dXNlcjpwYXNz" not in text  # what follows a key id, or another scheme's
    assert max(len(line) for line in text.splitlines()) < 2000


def test_requests_without_a_key_are_not_logged_unless_keys_are_off(tmp_path, audited, embedder):
    client = audited["client"]
    before = len(lines(audited["log"]))
    client.get("/v1/collections")
    client.get("/healthz")
    client.get("/")
    assert len(lines(audited["log"])) == before
    settings = Settings(home=tmp_path, broker_url=None, qdrant_url=None, bundle=None, require_keys=False)
    services = build_services(settings, embedder)
    try:
        with TestClient(create_app(services=services)) as open_client:
            open_client.get("/healthz")
            open_client.get("/v1/collections")
            open_client.get("/v1/jobs/nosuch")
    finally:
        services.close()
    assert [(e["key"], e["endpoint"], e["status"]) for e in lines(settings.audit_path)] == [
        ("anonymous", "list_collections", 200), ("anonymous", "get_job", 404)]


def test_an_unreachable_quota_store_is_a_logged_503(tmp_path, embedder):
    """With a broker the quotas are counted in its Redis: unreachable, every keyed request is refused."""
    settings = Settings(home=tmp_path, broker_url=f"redis://127.0.0.1:{free_port()}/0", qdrant_url=None,
                        bundle=None, require_keys=True)
    services = build_services(settings, embedder)
    key, token = services.keys.create("admin")
    try:
        with TestClient(create_app(services=services)) as client:
            response = client.get("/v1/collections", headers=bearer(token))
    finally:
        services.close()
    assert response.status_code == 503 and response.json()["error"]["code"] == "queue_unavailable"
    [entry] = lines(settings.audit_path)
    assert (entry["key"], entry["status"], entry["outcome"], entry["reason"]) == (key.id, 503, "failed",
                                                                                 "queue_unavailable")
