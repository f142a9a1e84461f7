"""Paged listings (a collection's photos, a key's own jobs) and several photos in one locate or similar call,
through the in-process API over real photos; the job listing also on the Redis store."""

from __future__ import annotations

import json
import uuid

import pytest

from geoloc import job_store
from geoloc.ingest.records import point_id
from tests.api_helpers import MAX_BATCH, expect_error, follow, photo_file, upload


def _photos(rows):
    return [("photo", (r["filename"], r["bytes"], "image/jpeg")) for r in rows]


def _audit(api):
    return [json.loads(line) for line in (api["home"] / "audit.jsonl").read_text().splitlines()]


def test_a_collection_s_photos_page_by_page(api, photos):
    client, reader = api["client"], api["reader"]
    first = client.get("/v1/collections/news/images", headers=reader).json()
    assert (first["total"], first["limit"], first["offset"]) == (6, 50, 0)
    expected = {point_id("news", r["sha256"]): r for r in photos["news"]}
    assert {item["id"] for item in first["items"]} == set(expected)
    for item in first["items"]:
        row = expected[item["id"]]
        assert item["source"] == row["filename"] and "/" not in item["source"]
        assert (item["lat"], item["lon"]) == pytest.approx((float(row["lat"]), float(row["lon"])), abs=1e-4)
        assert item["photo_url"] == f"/v1/collections/news/images/{item['id']}/photo"
        assert set(item) == {"id", "source", "lat", "lon", "photo_url"}
    pages = [client.get("/v1/collections/news/images", params={"limit": 4, "offset": offset}, headers=reader).json()
             for offset in (0, 4, 8)]
    assert [len(p["items"]) for p in pages] == [4, 2, 0] and {p["total"] for p in pages} == {6}
    assert [i["id"] for p in pages for i in p["items"]] == [i["id"] for i in first["items"]]  # a stable order
    for params in ({"limit": 0}, {"limit": 501}, {"offset": -1}):
        expect_error(client.get("/v1/collections/news/images", params=params, headers=reader), 422)
    error = expect_error(client.get("/v1/collections/secret/images", headers=reader), 403)
    assert photos["secret"][0]["filename"] not in json.dumps(error)
    expect_error(client.get("/v1/collections/nowhere/images", headers=api["admin"]), 404)


def test_a_key_lists_only_its_own_jobs_newest_first(api, photos):
    client, services = api["client"], api["services"]
    client.post("/v1/collections", json={"name": "listing"}, headers=api["admin"])
    try:
        _, token = services.keys.create("admin", ["listing"], name="listing desk")
        mine = {"Authorization": f"Bearer {token}"}
        started = []
        for row in photos["spare"][:3]:
            started.append(follow({**api, "admin": mine}, upload(api, "listing", [row], headers=mine).json()["job"]["id"])["id"])
        listed = client.get("/v1/jobs", headers=mine).json()
        assert (listed["total"], listed["limit"], listed["offset"]) == (3, 50, 0)
        assert [job["id"] for job in listed["items"]] == started[::-1]
        assert all(job["state"] == "succeeded" and job["owner"] != "" for job in listed["items"])
        page = client.get("/v1/jobs", params={"limit": 2, "offset": 1}, headers=mine).json()
        assert [job["id"] for job in page["items"]] == started[::-1][1:3] and page["total"] == 3
        others = client.get("/v1/jobs", params={"limit": 500}, headers=api["admin"]).json()
        assert not set(started) & {job["id"] for job in others["items"]}
        assert api["jobs"]["news"]["id"] in {job["id"] for job in others["items"]}
        expect_error(client.get("/v1/jobs", headers=api["reader"]), 403)
        expect_error(client.get("/v1/jobs", params={"limit": 501}, headers=mine), 422)
    finally:
        client.delete("/v1/collections/listing", headers=api["admin"])


def test_each_job_store_pages_an_owner_s_jobs_newest_first(store):
    owner, other = f"k-{uuid.uuid4().hex[:8]}", f"k-{uuid.uuid4().hex[:8]}"
    ids = [store.create("upload", "news", total=1, batches=1, owner=owner) for _ in range(5)]
    store.create("prune", "news", total=0, batches=1, owner=other)
    store.finish(ids[0], 1, job_store.Outcome(done=1))
    jobs, total = store.owned(owner, 50, 0)
    assert total == 5 and [job["id"] for job in jobs] == ids[::-1]
    assert jobs[-1]["state"] == "succeeded" and jobs[0]["state"] == "queued"
    jobs, total = store.owned(owner, 2, 3)
    assert total == 5 and [job["id"] for job in jobs] == [ids[1], ids[0]]
    assert store.owned(f"k-{uuid.uuid4().hex[:8]}", 50, 0) == ([], 0)


def test_several_photos_are_answered_each_in_order(api, photos):
    client, reader = api["client"], api["reader"]
    queries = [photos["news"][3], photos["secret"][1], photos["news"][0]]
    for endpoint in ("/v1/locate", "/v1/similar"):
        single = [client.post(endpoint, files=photo_file(q), data={"k": "3"}, headers=reader).json() for q in queries]
        response = client.post(endpoint, files=_photos(queries), data={"k": "3"}, headers=reader)
        assert response.status_code == 200, response.text
        answers = response.json()["answers"]
        assert len(answers) == 3
        for answer, alone in zip(answers, single):
            assert [n["id"] for n in answer["neighbours"]] == [n["id"] for n in alone["neighbours"]]
            assert {n["collection"] for n in answer["neighbours"]} == {"news"}
            assert answer["collections"] == ["news"]
        assert answers[0]["neighbours"][0]["id"] == point_id("news", queries[0]["sha256"])
        assert answers[2]["neighbours"][0]["id"] == point_id("news", queries[2]["sha256"])
        entry = [e for e in _audit(api) if e["endpoint"] == endpoint.rsplit("/", 1)[1]][-1]
        assert entry["photos"] == 3 and len(entry["answers"]) == 3
    located = client.post("/v1/locate", files=_photos(queries[:2]), headers=reader).json()["answers"]
    assert located[0]["lat"] == pytest.approx(single_lat(client, reader, queries[0]))


def single_lat(client, reader, query):
    return client.post("/v1/locate", files=photo_file(query), headers=reader).json()["lat"]


def test_every_photo_of_a_batch_counts_against_the_quota(api, photos):
    client, keys = api["client"], api["services"].keys
    _, token = keys.create("reader", ["news"], photos_per_hour=4)
    headers = {"Authorization": f"Bearer {token}"}
    rows = photos["news"][:3]
    assert client.post("/v1/similar", files=_photos(rows), headers=headers).status_code == 200
    expect_error(client.post("/v1/similar", files=_photos(rows[:2]), headers=headers), 429)
    assert client.post("/v1/similar", files=_photos(rows[:1]), headers=headers).status_code == 200
    _, token = keys.create("reader", ["news"], photos_per_hour=MAX_BATCH + 1)
    headers = {"Authorization": f"Bearer {token}"}
    too_many = _photos((photos["news"] * 2)[:MAX_BATCH + 1])
    error = expect_error(client.post("/v1/locate", files=too_many, headers=headers), 413)
    assert error["code"] == "too_many_photos"
    # refused before being charged: the whole quota is still there for a full batch
    response = client.post("/v1/locate", files=_photos((photos["news"] * 2)[:MAX_BATCH]), headers=headers)
    assert response.status_code == 200 and len(response.json()["answers"]) == MAX_BATCH
