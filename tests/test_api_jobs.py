"""The API's jobs: uploads, imports, re-embedding, pruning and deletion through the job runner, a queue that
cannot be reached, and Search-within-Cell with a bundle; same servers as test_api (tests/api_helpers.py)."""

from __future__ import annotations

import shutil

import pytest
from fastapi.testclient import TestClient

from geoloc.settings import Settings
from geoloc.ingest.records import point_id
from geoloc.search_api.app import create_app
from geoloc.search_api.services import build_services
from tests.photos import gps_block, photo_bytes
from tests.services import DATA, free_port
from tests.api_helpers import MAX_PHOTO_BYTES, expect_error, follow, photo_file, upload, where


def test_uploads_were_indexed(api, photos):
    for name in ("news", "secret"):
        job = api["jobs"][name]
        assert job["state"] == "succeeded" and job["kind"] == "upload"
        assert (job["total"], job["done"], job["skipped"], job["batches"]) == (6, 6, 0, 2)
    listed = api["client"].get("/v1/collections", headers=api["admin"]).json()["collections"]
    assert {c["name"]: c["photos"] for c in listed} == {"news": 6, "secret": 6}


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
    job = follow(api, response.json()["job"]["id"])
    assert (job["total"], job["done"], job["skipped"], job["failed"]) == (7, 2, 5, 0)
    assert job["reasons"] == {"duplicate_photo": 1, "file_too_large": 1, "invalid_coordinates": 1,
                              "no_gps": 1, "undecodable_image": 1}
    assert {"source": "corrupt.jpg", "reason": "undecodable_image"} in job["items"]
    hits = api["services"].gallery().scroll(where("mixed"))
    assert sorted(h.payload["source"] for h in hits) == sorted([real["filename"], "exif.jpg"])


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
    job = follow(api, response.json()["job"]["id"])
    assert job["kind"] == "import"
    assert (job["total"], job["done"], job["skipped"]) == (5, 3, 2)
    assert job["reasons"] == {"missing_file": 1, "unsupported_type": 1}
    hit = next(api["services"].gallery().scroll(where("imported")))
    assert hit.payload["extra"]["photographer"] and api["services"].originals.find(hit.payload["sha256"])

    job = follow(api, client.post("/v1/collections/imported/reembed", headers=admin).json()["job"]["id"])
    assert (job["kind"], job["state"], job["done"]) == ("reembed", "succeeded", 3)

    target = rows[0]
    radius = {"lat": float(target["lat"]), "lon": float(target["lon"]), "km": 1}
    job = follow(api, client.post("/v1/collections/imported/prune", json={"radius": radius},
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
        error = expect_error(upload({"client": client, "admin": {}}, "news", photos["spare"][:1]), 503)
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
        response = swc_api["client"].post("/v1/locate", files=photo_file(photos["secret"][0]), headers=swc_api["reader"],
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
