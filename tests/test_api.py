"""The HTTP API in-process (no broker: jobs run on the server's own thread) over a real Edge gallery and
real photos, embedded by the real backbone.

Covers every endpoint, the error contract (JSON, never a 500 for bad input), the limits, and above all
that a reader key never receives anything of a collection it was not granted.
"""

from __future__ import annotations

import io
import json
import shutil
import time
from contextlib import contextmanager

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from geoloc.gallery.base import SearchFilter
from geoloc.embedding import Embedder
from geoloc.settings import Settings
from geoloc.ingest.records import point_id, sha256_hex
from geoloc.models.partition import adaptive_hierarchy
from geoloc.search_api.app import create_app
from geoloc.search_api.services import build_services
from tests.bundles import cell_probabilities, constructed_bundle
from tests.photos import gps_block, photo_bytes
from tests.services import DATA, free_port, manifest_rows


MAX_PHOTO_BYTES = 128 << 10
MAX_BATCH = 8


@pytest.fixture(scope="module")
def photos():
    rows = manifest_rows(16)
    for row in rows:
        row["bytes"] = (DATA / "images" / row["filename"]).read_bytes()
        row["sha256"] = sha256_hex(row["bytes"])
    return {"news": rows[:6], "secret": rows[6:12], "spare": rows[12:]}


@contextmanager
def _serving(home, imports, photos, embedder):
    """The API in-process on its own data home, with `embedder` as its model and the news and secret
    photos uploaded through it; a reader key is granted news only."""
    settings = Settings(home=home, broker_url=None, qdrant_url=None, gallery_shared=False, bundle=None,
                        import_roots=[imports.resolve()], require_keys=True, job_batch=4,
                        max_photo_bytes=MAX_PHOTO_BYTES, max_pixels=4_000_000, max_batch_photos=MAX_BATCH)
    services = build_services(settings, embedder)
    try:
        _, admin = services.keys.create("admin", name="tests")
        reader_key, reader = services.keys.create("reader", ["news"], name="news desk")
        with TestClient(create_app(services=services)) as client:
            state = {"client": client, "services": services, "home": home, "imports": imports,
                     "admin": {"Authorization": f"Bearer {admin}"}, "reader": {"Authorization": f"Bearer {reader}"},
                     "reader_id": reader_key.id, "jobs": {}}
            for name in ("news", "secret"):
                assert client.post("/v1/collections", json={"name": name}, headers=state["admin"]).status_code == 201
                job_id = _upload(state, name, photos[name]).json()["job"]["id"]
                state["jobs"][name] = _follow(state, job_id)
            yield state
    finally:
        services.close()


@pytest.fixture(scope="module")
def api(tmp_path_factory, photos, embedder):
    with _serving(tmp_path_factory.mktemp("home"), tmp_path_factory.mktemp("imports"), photos, embedder) as state:
        yield state


@pytest.fixture(scope="module")
def swc_api(tmp_path_factory, photos, embedder):
    """A second API whose model is a real bundle over a hierarchy of the news photos, with a classifier
    built to be sure of fine cell 0 (0.7), then cell 1, then 0.02 for each other cell, whatever the photo;
    its gallery is indexed with that bundle (RRM vectors, the bundle's model id) by its own uploads."""
    news = photos["news"]
    lat, lon = (np.array([float(r[c]) for r in news]) for c in ("lat", "lon"))
    hierarchy = adaptive_hierarchy(lat, lon, (2, 3, 4))
    n_fine = len(hierarchy.fine)
    probs = cell_probabilities(n_fine, {0: 0.7, 1: 0.3 - 0.02 * (n_fine - 2)})
    bundle = constructed_bundle(tmp_path_factory.mktemp("bundle") / "swc", embedder.backbone, hierarchy, probs)
    with _serving(tmp_path_factory.mktemp("swc-home"), tmp_path_factory.mktemp("swc-imports"), photos,
                  Embedder(embedder.backbone, bundle)) as state:
        yield {**state, "bundle": bundle}


def _files(rows):
    return [("photos", (r["filename"], r["bytes"], "image/jpeg")) for r in rows]


def _upload(state, collection, rows, headers=None):
    return state["client"].post(f"/v1/collections/{collection}/images", files=_files(rows),
                                data={"lat": [r["lat"] for r in rows], "lon": [r["lon"] for r in rows]},
                                headers=headers or state["admin"])


def _follow(state, job_id, timeout_s=60):
    deadline = time.monotonic() + timeout_s
    while True:
        job = state["client"].get(f"/v1/jobs/{job_id}", headers=state["admin"]).json()
        if job["state"] in ("succeeded", "failed"):
            return job
        assert time.monotonic() < deadline, f"job {job_id} did not finish: {job}"
        time.sleep(0.05)


def _where(collection):
    return SearchFilter(collections=[collection])


def _photo(row):
    return {"photo": (row["filename"], row["bytes"], "image/jpeg")}


def _error(response, status):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["status"] == status and error["code"] and len(error["message"]) > 10
    return error


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
    assert "/v1/locate" in api["client"].get("/").text


def test_uploads_were_indexed(api, photos):
    for name in ("news", "secret"):
        job = api["jobs"][name]
        assert job["state"] == "succeeded" and job["kind"] == "upload"
        assert (job["total"], job["done"], job["skipped"], job["batches"]) == (6, 6, 0, 2)
    listed = api["client"].get("/v1/collections", headers=api["admin"]).json()["collections"]
    assert {c["name"]: c["photos"] for c in listed} == {"news": 6, "secret": 6}


def test_keys_are_required_and_revocation_is_immediate(api, photos):
    client = api["client"]
    _error(client.post("/v1/locate", files=_photo(photos["news"][0])), 401)
    _error(client.get("/v1/collections", headers={"Authorization": "Bearer gk_nope_nope"}), 401)
    key, token = api["services"].keys.create("reader", ["news"])
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/v1/collections", headers=headers).status_code == 200
    api["services"].keys.revoke(key.id)
    _error(client.get("/v1/collections", headers=headers), 401)


def test_upload_skips_unusable_photos_with_their_reasons(api, photos):
    client, admin = api["client"], api["admin"]
    assert client.post("/v1/collections", json={"name": "mixed"}, headers=admin).status_code == 201
    real = photos["spare"][0]
    batch = [  # (filename, bytes, lat, lon); empty coordinates: read EXIF
        (real["filename"], real["bytes"], real["lat"], real["lon"]),
        ("exif.jpg", photo_bytes(gps_block(48.8584, 2.2945)), "", ""),
        ("no_gps.jpg", photo_bytes(colour=(1, 2, 3)), "", ""),
        ("corrupt.jpg", b"\xff\xd8\xff\xe0 not really a jpeg", "", ""),
        ("again.jpg", real["bytes"], real["lat"], real["lon"]),
        ("huge.jpg", b"\xff" * (MAX_PHOTO_BYTES + 1), "", ""),
        ("nowhere.jpg", photo_bytes(colour=(9, 9, 9)), "123", "45"),
    ]
    response = client.post("/v1/collections/mixed/images", headers=admin,
                           files=[("photos", (n, b, "image/jpeg")) for n, b, _, _ in batch],
                           data={"lat": [lat for _, _, lat, _ in batch], "lon": [lon for _, _, _, lon in batch]})
    assert response.status_code == 202, response.text
    listing = response.json()["photos"]
    assert listing[0] == {"filename": real["filename"], "id": point_id("mixed", real["sha256"]),
                          "sha256": real["sha256"], "status": "queued", "reason": None}
    assert [p["reason"] for p in listing[4:]] == ["duplicate_photo", "file_too_large", "invalid_coordinates"]
    job = _follow(api, response.json()["job"]["id"])
    assert (job["total"], job["done"], job["skipped"], job["failed"]) == (7, 2, 5, 0)
    assert job["reasons"] == {"duplicate_photo": 1, "file_too_large": 1, "invalid_coordinates": 1,
                              "no_gps": 1, "undecodable_image": 1}
    assert {"source": "corrupt.jpg", "reason": "undecodable_image"} in job["items"]
    hits = api["services"].gallery().scroll(_where("mixed"))
    assert sorted(h.payload["source"] for h in hits) == sorted([real["filename"], "exif.jpg"])


def test_locate_answers_with_evidence_and_is_audited(api, photos):
    query = photos["news"][2]
    response = api["client"].post("/v1/locate", files=_photo(query), data={"k": "3"}, headers=api["reader"])
    assert response.status_code == 200, response.text
    answer = response.json()
    top = answer["neighbours"][0]
    assert top["id"] == point_id("news", query["sha256"]) and top["similarity"] == pytest.approx(1.0)
    assert answer["collections"] == ["news"] and answer["model"] == api["services"].embedder.model_id
    assert top["photo_url"] == f"/v1/collections/news/images/{top['id']}/photo"
    entry = json.loads((api["home"] / "audit.jsonl").read_text().splitlines()[-1])
    assert entry["key"] == api["reader_id"] and entry["endpoint"] == "locate"
    assert entry["collections"] == ["news"] and entry["outcome"] == "answered"
    assert entry["answer"]["lat"] == pytest.approx(answer["lat"])
    assert set(entry) <= {"time", "key", "endpoint", "collections", "outcome", "k", "top_cells", "answer"}


def test_reader_never_receives_a_photo_of_an_ungranted_collection(api, photos):
    client, reader, admin = api["client"], api["reader"], api["admin"]
    granted = {point_id("news", r["sha256"]) for r in photos["news"]}
    for query in photos["secret"] + photos["news"][:2]:  # even its own photo, the secret is never shown
        for endpoint in ("/v1/locate", "/v1/similar"):
            response = client.post(endpoint, files=_photo(query), data={"k": "20"}, headers=reader)
            assert response.status_code == 200, response.text
            neighbours = response.json()["neighbours"]
            assert neighbours and {n["id"] for n in neighbours} <= granted
            assert {n["collection"] for n in neighbours} == {"news"}
    query = _photo(photos["secret"][0])
    for collections in ("secret", "news,secret"):
        for endpoint in ("/v1/locate", "/v1/similar"):
            _error(client.post(endpoint, files=query, data={"collections": collections}, headers=reader), 403)
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
        _upload(api, "news", photos["spare"][:1], headers=reader),
    ]
    for response in refused:
        _error(response, 403)
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
    response = api["client"].post("/v1/similar", files=_photo(centre), headers=api["admin"],
                                  data={"lat": centre["lat"], "lon": centre["lon"], "radius_km": "50"})
    assert response.status_code == 200, response.text
    neighbours = response.json()["neighbours"]
    assert neighbours[0]["id"] == point_id("news", centre["sha256"])
    assert all(n["km"] <= 50 for n in neighbours)


def _png(width, height):
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def test_bad_input_gets_a_clear_error_never_a_500(api, photos):
    client, admin, reader = api["client"], api["admin"], api["reader"]
    good = _photo(photos["news"][0])
    cases = [
        (client.post("/v1/locate", files={"photo": ("x.jpg", b"garbage", "image/jpeg")}, headers=reader), 422),
        (client.post("/v1/locate", files={"photo": ("x.jpg", b"", "image/jpeg")}, headers=reader), 422),
        (client.post("/v1/locate", data={"k": "3"}, headers=reader), 422),
        (client.post("/v1/locate", files=good, data={"k": "0"}, headers=reader), 422),
        (client.post("/v1/locate", files=good, data={"k": "many"}, headers=reader), 422),
        (client.post("/v1/locate", files=good, data={"collections": "../etc"}, headers=reader), 422),
        (client.post("/v1/locate", files={"photo": ("big.png", _png(3000, 2000), "image/png")}, headers=reader), 413),
        (client.post("/v1/locate", files={"photo": ("x.jpg", b"\xff" * (MAX_PHOTO_BYTES + 1))}, headers=reader), 413),
        (client.post("/v1/similar", files=good, data={"lat": "10"}, headers=reader), 422),
        (client.post("/v1/collections", json={"name": "news"}, headers=admin), 409),
        (client.post("/v1/collections", json={"name": "bad/name"}, headers=admin), 422),
        (client.post("/v1/collections", content=b"{not json", headers={**admin, "content-type": "application/json"}), 422),
        (_upload(api, "nosuch", photos["spare"][:1]), 404),
        (_upload(api, "news", photos["spare"][:1] * (MAX_BATCH + 1)), 413),
        (client.post("/v1/collections/news/images", files=_files(photos["spare"][:2]), data={"lat": ["1"]},
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
        _error(response, status)


def test_request_body_limit(api):
    client, admin = api["client"], api["admin"]
    limit = MAX_PHOTO_BYTES * MAX_BATCH + (1 << 20)
    declared = client.post("/v1/collections/news/images", content=b"x" * (limit + 1), headers={
        **admin, "content-type": "multipart/form-data; boundary=xyz"})
    assert "at most 8 photos" in _error(declared, 413)["message"]

    def chunks():  # no Content-Length: counted as it streams
        for _ in range(limit // 65536 + 2):
            yield b"x" * 65536

    streamed = client.post("/v1/collections/news/images", content=chunks(), headers={
        **admin, "content-type": "multipart/form-data; boundary=xyz"})
    _error(streamed, 413)


def test_import_reembed_prune_and_delete(api, photos):
    client, admin = api["client"], api["admin"]
    folder = api["imports"] / "batch"
    folder.mkdir()
    rows = photos["spare"][1:4]
    lines = ["filename,lat,lon,photographer"]
    for r in rows:
        shutil.copy(DATA / "images" / r["filename"], folder / r["filename"])
        lines.append(f"{r['filename']},{r['lat']},{r['lon']},{r['photographer']}")
    lines += ["gone.jpg,10,10,x", "notes.txt,10,10,x"]
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    assert client.post("/v1/collections", json={"name": "imported"}, headers=admin).status_code == 201
    response = client.post("/v1/collections/imported/imports", json={"path": str(folder / "manifest.csv")},
                           headers=admin)
    assert response.status_code == 202, response.text
    job = _follow(api, response.json()["job"]["id"])
    assert job["kind"] == "import"
    assert (job["total"], job["done"], job["skipped"]) == (5, 3, 2)
    assert job["reasons"] == {"missing_file": 1, "unsupported_type": 1}
    hit = next(api["services"].gallery().scroll(_where("imported")))
    assert hit.payload["extra"]["photographer"] and hit.payload["extra"]["original"].startswith(str(folder))

    job = _follow(api, client.post("/v1/collections/imported/reembed", headers=admin).json()["job"]["id"])
    assert (job["kind"], job["state"], job["done"]) == ("reembed", "succeeded", 3)

    target = rows[0]
    radius = {"lat": float(target["lat"]), "lon": float(target["lon"]), "km": 1}
    job = _follow(api, client.post("/v1/collections/imported/prune", json={"radius": radius},
                                   headers=admin).json()["job"]["id"])
    assert (job["state"], job["removed"]) == ("succeeded", 1)

    remaining = rows[1]
    response = client.delete(f"/v1/collections/imported/images/{point_id('imported', remaining['sha256'])}",
                             headers=admin)
    assert response.json() == {"deleted": 1}
    assert client.delete("/v1/collections/imported", headers=admin).json() == {"deleted": 1}
    names = [c["name"] for c in client.get("/v1/collections", headers=admin).json()["collections"]]
    assert "imported" not in names


def test_an_unreachable_queue_is_a_503_not_a_500(tmp_path, photos, embedder):
    settings = Settings(home=tmp_path, broker_url=f"redis://127.0.0.1:{free_port()}/0", qdrant_url=None,
                        bundle=None, require_keys=False)
    services = build_services(settings, embedder)
    with TestClient(create_app(services=services)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["gallery"] == "ok"
        assert ready.json()["checks"]["broker"].startswith("unreachable")
        assert client.post("/v1/collections", json={"name": "news"}).status_code == 201
        error = _error(_upload({"client": client, "admin": {}}, "news", photos["spare"][:1]), 503)
        assert error["code"] == "queue_unavailable" and "GEOLOC_BROKER_URL" in error["message"]


def test_locate_searches_within_the_predicted_cells_with_a_bundle(swc_api, photos):
    bundle = swc_api["bundle"]
    fine = bundle.hierarchy.fine
    for name in ("news", "secret"):
        job = swc_api["jobs"][name]
        assert (job["state"], job["done"], job["skipped"]) == ("succeeded", 6, 0)
    stored = list(swc_api["services"].gallery().scroll())
    assert len(stored) == 12
    assert {(h.payload["model"], h.payload["bundle"]) for h in stored} == {(bundle.model_id, bundle.bundle_id)}
    for top_cells, allowed in ((1, {0}), (2, {0, 1})):
        response = swc_api["client"].post("/v1/locate", files=_photo(photos["secret"][0]), headers=swc_api["reader"],
                                          data={"k": "10", "top_cells": str(top_cells)})
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["method"] == "swc-cluster" and answer["model"] == bundle.model_id
        assert answer["cell"]["token"] == fine.tokens[0] and answer["cell"]["probability"] == pytest.approx(0.7)
        assert [c["token"] for c in answer["candidates"]][:2] == fine.tokens[:2]
        assert 0 <= answer["confidence"] <= 1
        found = fine.assign([n["lat"] for n in answer["neighbours"]], [n["lon"] for n in answer["neighbours"]])
        assert answer["neighbours"] and set(found.tolist()) <= allowed
        assert {n["collection"] for n in answer["neighbours"]} == {"news"}
