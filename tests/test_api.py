"""The HTTP API in-process (no broker: jobs run on the server's own thread) over a real Edge gallery and
real photos, embedded by the real backbone.

Covers every endpoint, the error contract (JSON, never a 500 for bad input), the limits, and above all
that a reader key never receives anything of a collection it was not granted.
"""

from __future__ import annotations

import json

import pytest

from geoloc.ingest.records import point_id
from tests.api_helpers import MAX_BATCH, MAX_PHOTO_BYTES, expect_error, files_of, photo_file, png_bytes, upload


def test_health_and_readiness(api):
    assert api["client"].get("/healthz").json()["status"] == "ok"
    ready = api["client"].get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["gallery"] == "ok"


def test_openapi_documents_every_endpoint_with_examples(api):
    spec = api["client"].get("/openapi.json").json()
    expected = {("post", "/v1/locate"), ("post", "/v1/similar"), ("get", "/v1/collections"),
                ("post", "/v1/collections"), ("delete", "/v1/collections/{name}"),
                ("post", "/v1/collections/{name}/images"), ("post", "/v1/collections/{name}/imports"),
                ("delete", "/v1/collections/{name}/images/{image}"), ("post", "/v1/collections/{name}/prune"),
                ("post", "/v1/collections/{name}/reembed"), ("get", "/v1/jobs/{job_id}"),
                ("get", "/healthz"), ("get", "/readyz")}
    documented = {(method, path) for path, ops in spec["paths"].items() for method in ops}
    assert expected <= documented
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert op.get("summary"), (method, path)
            if path.startswith("/v1/"):
                assert {"401", "403", "422"} <= set(op["responses"]), (method, path)
    schemas = spec["components"]["schemas"]
    for name in ("LocateResponse", "SimilarResponse", "Job", "JobAccepted", "PruneRequest", "CollectionInfo"):
        assert schemas[name].get("examples"), name
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert 'href="docs"' in api["client"].get("/").text  # the page links the API reference


def test_keys_are_required_and_revocation_is_immediate(api, photos):
    client = api["client"]
    expect_error(client.post("/v1/locate", files=photo_file(photos["news"][0])), 401)
    expect_error(client.get("/v1/collections", headers={"Authorization": "Bearer gk_nope_nope"}), 401)
    key, token = api["services"].keys.create("reader", ["news"])
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/v1/collections", headers=headers).status_code == 200
    api["services"].keys.revoke(key.id)
    expect_error(client.get("/v1/collections", headers=headers), 401)


def test_locate_answers_with_evidence_and_is_audited(api, photos):
    query = photos["news"][2]
    response = api["client"].post("/v1/locate", files=photo_file(query), data={"k": "3"}, headers=api["reader"])
    assert response.status_code == 200, response.text
    answer = response.json()
    top = answer["neighbours"][0]
    assert top["id"] == point_id("news", query["sha256"]) and top["similarity"] == pytest.approx(1.0)
    assert answer["collections"] == ["news"] and answer["model"] == api["services"].embedder.model_id
    assert top["photo_url"] == f"/v1/collections/news/images/{top['id']}/photo"
    # places named offline, and calibrated chances that only grow with the radius
    assert answer["place"]["label"] and answer["place"]["country"]
    assert all(n["place"]["country_code"] for n in answer["neighbours"])
    # the gallery holds this very photo: its recorded location is the answer, and certain
    assert answer["same_photo"] == {"id": top["id"], "collection": "news", "source": top["source"]}
    assert (answer["lat"], answer["lon"]) == (top["lat"], top["lon"]) and answer["calibration"] == "same photo"
    assert set(answer["probabilities"].values()) == {1.0} and answer["uncertainty_km"] == 1
    # a photo the gallery lacks: calibrated chances that only grow with the radius
    fresh = api["client"].post("/v1/locate", files=photo_file(photos["spare"][0]), data={"k": "3"},
                               headers=api["reader"]).json()
    chances = [fresh["probabilities"][r] for r in ("1", "25", "200", "750", "2500")]
    assert chances == sorted(chances) and all(0 <= p < 1 for p in chances) and fresh["same_photo"] is None
    assert fresh["calibration"] == "default" and fresh["confidence"] == fresh["probabilities"]["25"]
    sure = api["client"].post("/v1/locate", files=photo_file(photos["spare"][0]), headers=api["reader"],
                              data={"k": "3", "min_confidence": "1", "within_km": "2500"}).json()
    assert sure["abstained"] and sure["confidence"] == sure["probabilities"]["2500"]
    entry = json.loads((api["home"] / "audit.jsonl").read_text().splitlines()[-1])
    assert entry["key"] == api["reader_id"] and entry["endpoint"] == "locate"
    assert entry["collections"] == ["news"] and entry["outcome"] == "answered"
    assert entry["answer"]["lat"] == pytest.approx(sure["lat"])
    assert set(entry) <= {"time", "key", "endpoint", "collections", "outcome", "k", "top_cells", "answer", "prior",
                          "request", "status", "photos"}


def test_reader_never_receives_a_photo_of_an_ungranted_collection(api, photos):
    client, reader, admin = api["client"], api["reader"], api["admin"]
    granted = {point_id("news", r["sha256"]) for r in photos["news"]}
    for query in photos["secret"] + photos["news"][:2]:  # even its own photo, the secret is never shown
        for endpoint in ("/v1/locate", "/v1/similar"):
            response = client.post(endpoint, files=photo_file(query), data={"k": "20"}, headers=reader)
            assert response.status_code == 200, response.text
            neighbours = response.json()["neighbours"]
            assert neighbours and {n["id"] for n in neighbours} <= granted
            assert {n["collection"] for n in neighbours} == {"news"}
    query = photo_file(photos["secret"][0])
    for collections in ("secret", "news,secret"):
        for endpoint in ("/v1/locate", "/v1/similar"):
            expect_error(client.post(endpoint, files=query, data={"collections": collections}, headers=reader), 403)
    assert [c["name"] for c in client.get("/v1/collections", headers=reader).json()["collections"]] == ["news"]
    secret = photos["secret"][0]
    secret_id = point_id("secret", secret["sha256"])
    refused = [
        client.get(f"/v1/collections/secret/images/{secret_id}/photo", headers=reader),
        client.get(f"/v1/jobs/{api['jobs']['secret']['id']}", headers=reader),
        client.delete(f"/v1/collections/secret/images/{secret_id}", headers=reader),
        client.delete("/v1/collections/secret", headers=reader),
        client.post("/v1/collections/secret/prune", json={"unplaceable": True}, headers=reader),
        client.post("/v1/collections/secret/reembed", headers=reader),
        client.post("/v1/collections/secret/imports", json={"path": "/"}, headers=reader),
        client.post("/v1/collections", json={"name": "mine"}, headers=reader),
        upload(api, "news", photos["spare"][:1], headers=reader),
    ]
    for response in refused:
        expect_error(response, 403)
        assert secret["sha256"] not in response.text and secret["filename"] not in response.text
    # a granted photo's original comes back byte for byte; the secret one is still there for the admin
    own = photos["news"][0]
    response = client.get(f"/v1/collections/news/images/{point_id('news', own['sha256'])}/photo", headers=reader)
    assert response.status_code == 200 and response.content == own["bytes"]
    assert client.get(f"/v1/collections/secret/images/{secret['sha256']}/photo", headers=admin).content == secret["bytes"]
    audit = [json.loads(line) for line in (api["home"] / "audit.jsonl").read_text().splitlines()]
    assert any(e["outcome"] == "refused" and e["collections"] == ["secret"] for e in audit)


def test_similar_within_a_radius(api, photos):
    centre = photos["news"][1]
    response = api["client"].post("/v1/similar", files=photo_file(centre), headers=api["admin"],
                                  data={"lat": centre["lat"], "lon": centre["lon"], "radius_km": "50"})
    assert response.status_code == 200, response.text
    neighbours = response.json()["neighbours"]
    assert neighbours[0]["id"] == point_id("news", centre["sha256"])
    assert all(n["km"] <= 50 for n in neighbours)
    assert all(n["place"]["country"] and n["place"]["name"] for n in neighbours)  # named, as locate's are


def test_bad_input_gets_a_clear_error_never_a_500(api, photos):
    client, admin, reader = api["client"], api["admin"], api["reader"]
    good = photo_file(photos["news"][0])
    cases = [
        (client.post("/v1/locate", files={"photo": ("x.jpg", b"garbage", "image/jpeg")}, headers=reader), 422),
        (client.post("/v1/locate", files={"photo": ("x.jpg", b"", "image/jpeg")}, headers=reader), 422),
        (client.post("/v1/locate", data={"k": "3"}, headers=reader), 422),
        (client.post("/v1/locate", files=good, data={"k": "0"}, headers=reader), 422),
        (client.post("/v1/locate", files=good, data={"k": "many"}, headers=reader), 422),
        (client.post("/v1/locate", files=good, data={"collections": "../etc"}, headers=reader), 422),
        (client.post("/v1/locate", files={"photo": ("big.png", png_bytes(3000, 2000), "image/png")}, headers=reader), 413),
        (client.post("/v1/locate", files={"photo": ("x.jpg", b"\xff" * (MAX_PHOTO_BYTES + 1))}, headers=reader), 413),
        (client.post("/v1/similar", files=good, data={"lat": "10"}, headers=reader), 422),
        (client.post("/v1/collections", json={"name": "news"}, headers=admin), 409),
        (client.post("/v1/collections", json={"name": "bad/name"}, headers=admin), 422),
        (client.post("/v1/collections", content=b"{not json", headers={**admin, "content-type": "application/json"}), 422),
        (upload(api, "nosuch", photos["spare"][:1]), 404),
        (upload(api, "news", photos["spare"][:1] * (MAX_BATCH + 1)), 413),
        (client.post("/v1/collections/news/images", files=files_of(photos["spare"][:2]), data={"lat": ["1"]},
                     headers=admin), 422),
        (client.post("/v1/collections/news/images", headers=admin), 422),
        (client.post("/v1/collections/news/prune", json={}, headers=admin), 422),
        (client.post("/v1/collections/news/prune", json={"box": {"south": 10, "west": 0, "north": 5, "east": 1}},
                     headers=admin), 422),
        (client.post("/v1/collections/news/prune", json={"unplaceable": True}, headers=admin), 422),
        (client.post("/v1/collections/news/imports", json={"path": "/etc"}, headers=admin), 403),
        (client.post("/v1/collections/news/imports", json={"path": str(api["imports"] / "none.csv")},
                     headers=admin), 422),
        (client.post("/v1/collections/news/imports", json={}, headers=admin), 422),
        (client.delete("/v1/collections/news/images/not-an-id", headers=admin), 422),
        (client.delete(f"/v1/collections/news/images/{'0' * 64}", headers=admin), 404),
        (client.get("/v1/jobs/not-a-job", headers=admin), 404),
        (client.delete("/v1/collections/nosuch", headers=admin), 404),
        (client.get("/v1/nothing", headers=admin), 404),
    ]
    for response, status in cases:
        expect_error(response, status)


def test_request_body_limit(api):
    client, admin = api["client"], api["admin"]
    limit = MAX_PHOTO_BYTES * MAX_BATCH + (1 << 20)
    declared = client.post("/v1/collections/news/images", content=b"x" * (limit + 1), headers={
        **admin, "content-type": "multipart/form-data; boundary=xyz"})
    assert "at most 8 photos" in expect_error(declared, 413)["message"]

    def chunks():  # no Content-Length: counted as it streams
        for _ in range(limit // 65536 + 2):
            yield b"x" * 65536

    streamed = client.post("/v1/collections/news/images", content=chunks(), headers={
        **admin, "content-type": "multipart/form-data; boundary=xyz"})
    expect_error(streamed, 413)


def test_nul_bytes_and_over_long_paths_are_a_422_never_a_500(api):
    client, admin = api["client"], api["admin"]
    root = str(api["imports"])
    for body in ({"path": root + "/x\u0000y.csv"}, {"path": "a" * 5000}, {"path": root + "/" + "b" * 4000},
                 {"path": root + "/" + ("c" * 250 + "/") * 14}):
        expect_error(client.post("/v1/collections/news/imports", json=body, headers=admin), 422)
    expect_error(client.post("/v1/collections/news/reembed", headers=admin,
                             json={"encoder": {"backbone": "clip", "checkpoint": root + "/m\u0000"}}), 422)
    expect_error(client.post("/v1/collections", json={"name": "nul", "description": "a\u0000b"}, headers=admin), 422)
    assert "nul" not in {c["name"] for c in client.get("/v1/collections", headers=admin).json()["collections"]}
