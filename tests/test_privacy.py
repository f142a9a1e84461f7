"""Privacy over the real in-process API (real photos, real backbone, real Edge gallery):

* a reader key never receives a server path, from any response it can get: answers, listings, photos,
  refusals, and errors that name the gallery's folder (an admin gets those whole);
* an admin key scoped to collections manages, lists and searches only those, on every admin route;
* every admin sees only the jobs its own key started.
"""

from __future__ import annotations

import csv
import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from geoloc.gallery.base import GalleryPoint, make_payload
from geoloc.ingest.records import point_id
from geoloc.runtime import Runtime
from geoloc.search_api.app import create_app
from geoloc.search_api.services import build_services
from geoloc.settings import Settings
from tests.api_helpers import expect_error, follow, photo_file, png_bytes, serving, upload, where
from tests.photos import photo_bytes


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def site(tmp_path_factory, photos, embedder):
    """The API of tests/api_helpers.py plus a collection 'paths' whose photos were named by server paths:
    two uploaded under their full path on the server, one imported from a manifest naming it by absolute
    path, one written by an older geoloc that kept absolute paths. A reader and a scoped admin, on top."""
    home, imports = tmp_path_factory.mktemp("privacy-home"), tmp_path_factory.mktemp("privacy-imports")
    with serving(home, imports, photos, embedder) as state:
        client, admin, services = state["client"], state["admin"], state["services"]
        spare = photos["spare"]
        assert client.post("/v1/collections", json={"name": "paths"}, headers=admin).status_code == 201
        archive = imports / "archive" / "2021"
        archive.mkdir(parents=True)
        for row in spare[:3]:
            (archive / row["filename"]).write_bytes(row["bytes"])
        response = client.post("/v1/collections/paths/images", headers=admin, data={
            "lat": [r["lat"] for r in spare[:2]], "lon": [r["lon"] for r in spare[:2]]}, files=[
            ("photos", (str(archive / r["filename"]), r["bytes"], "image/jpeg")) for r in spare[:2]])
        assert follow(state, response.json()["job"]["id"])["done"] == 2
        with open(imports / "manifest.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["filename", "lat", "lon"])
            writer.writerow([str(archive / spare[2]["filename"]), spare[2]["lat"], spare[2]["lon"]])
        response = client.post("/v1/collections/paths/imports", json={"path": str(imports / "manifest.csv")},
                               headers=admin)
        assert follow(state, response.json()["job"]["id"])["done"] == 1
        old = spare[3]
        image = Image.open(io.BytesIO(old["bytes"])).convert("RGB")
        vector = embedder.vectors(embedder.features([image]))[0]
        services.gallery().upsert([GalleryPoint(point_id("paths", old["sha256"]), vector, make_payload(
            "paths", float(old["lat"]), float(old["lon"]), str(archive / old["filename"]), embedder.model_id,
            old["sha256"]))])
        _, reader = services.keys.create("reader", ["paths", "news"], name="paths desk")
        _, scoped = services.keys.create("admin", ["news"], name="news editor")
        locations = {str(p) for p in (home, imports, home.resolve(), imports.resolve())}
        yield {**state, "paths_reader": bearer(reader), "scoped": bearer(scoped), "locations": locations}


def shows_no_server_path(response, locations) -> None:
    text = response.text if response.headers.get("content-type", "").startswith("application/json") else ""
    seen = text + " ".join(f"{k}: {v}" for k, v in response.headers.items())
    assert not any(location in seen for location in locations), seen


def test_answers_name_photos_inside_their_collection(site, photos):
    client, reader = site["client"], site["paths_reader"]
    stored = {h.payload["source"] for h in site["services"].gallery().scroll(where("paths"))}
    assert sum(source.startswith(str(site["imports"])) for source in stored) == 3  # two uploads, the old entry
    query = photos["spare"][0]
    for endpoint in ("/v1/locate", "/v1/similar"):
        response = client.post(endpoint, files=photo_file(query), headers=reader,
                               data={"k": "20", "collections": "paths"})
        assert response.status_code == 200, response.text
        shows_no_server_path(response, site["locations"])
        sources = {n["source"] for n in response.json()["neighbours"]}
        uploaded, imported, old = photos["spare"][:2], photos["spare"][2], photos["spare"][3]
        assert sources == {r["filename"] for r in uploaded} | {f"archive/2021/{imported['filename']}",
                                                               old["filename"]}
        if endpoint == "/v1/locate":  # the query is an upload named by its full path: recognised, by its name
            assert response.json()["same_photo"]["source"] == query["filename"]


def test_no_response_a_reader_can_get_shows_a_server_path(site, photos):
    client, reader, imports = site["client"], site["paths_reader"], site["imports"]
    spare = photos["spare"][0]
    own = point_id("paths", spare["sha256"])
    photo = photo_file(spare)
    job = site["jobs"]["news"]["id"]
    responses = {
        200: [client.get("/v1/collections", headers=reader),
              client.get(f"/v1/collections/paths/images/{own}/photo", headers=reader),
              client.get("/healthz"), client.get("/readyz"), client.get("/openapi.json"), client.get("/")],
        401: [client.get("/v1/collections", headers=bearer("gk_0123456789ab_nope")),
              client.post("/v1/locate", files=photo)],
        403: [client.get(f"/v1/jobs/{job}", headers=reader),
              client.post("/v1/collections/paths/imports", json={"path": str(imports)}, headers=reader),
              client.post("/v1/collections/paths/reembed", json={"encoder": {"checkpoint": str(imports)}},
                          headers=reader),
              client.post("/v1/collections/paths/prune", json={"unplaceable": True}, headers=reader),
              client.delete("/v1/collections/paths", headers=reader),
              client.post("/v1/locate", files=photo, data={"collections": "secret"}, headers=reader)],
        404: [client.get(f"/v1/collections/paths/images/{'0' * 64}/photo", headers=reader),
              client.get(str(imports), headers=reader)],
        409: [client.post("/v1/locate", files=photo, data={"collections": "nothing"}, headers=bearer(
            site["services"].keys.create("reader", ["nothing"])[1]))],
        413: [client.post("/v1/locate", files={"photo": (str(imports / "big.png"), png_bytes(3000, 2000))},
                          headers=reader)],
        422: [client.post("/v1/locate", files={"photo": (str(imports / "x.jpg"), b"garbage")}, headers=reader),
              client.post("/v1/similar", files=photo, data={"k": str(imports)}, headers=reader)],
    }
    hasty = bearer(site["services"].keys.create("reader", ["paths"], requests_per_minute=1)[1])
    responses[429] = [client.get("/v1/collections", headers=hasty) and client.get("/v1/collections", headers=hasty)]
    for status, answers in responses.items():
        for response in answers:
            assert response.status_code == status, (status, response.text)
            shows_no_server_path(response, site["locations"])


def test_an_error_naming_the_gallery_folder_is_whole_only_for_an_admin(tmp_path, photos, embedder):
    settings = Settings(home=tmp_path, broker_url=None, qdrant_url=None, gallery_shared=False, bundle=None)
    holder = Runtime(settings, embedder)
    holder.gallery()  # another opener holds the embedded gallery: this API cannot open it
    services = build_services(settings, embedder)
    try:
        _, admin = services.keys.create("admin")
        _, reader = services.keys.create("reader", ["news"])
        with TestClient(create_app(services=services)) as client:
            photo = photo_file(photos["news"][0])
            told = expect_error(client.post("/v1/locate", files=photo, headers=bearer(admin)), 503)["message"]
            assert str(tmp_path) in told and "open in another process" in told
            for response in (client.post("/v1/locate", files=photo, headers=bearer(reader)), client.get("/readyz")):
                assert response.status_code == 503
                shows_no_server_path(response, {str(tmp_path), str(tmp_path.resolve())})
            hidden = expect_error(client.post("/v1/similar", files=photo, headers=bearer(reader)), 503)["message"]
            assert hidden == told.replace(str(tmp_path), "[server]")
    finally:
        services.close()
        holder.close()


def test_a_scoped_admin_manages_only_its_collections(site, photos):
    client, scoped, admin = site["client"], site["scoped"], site["admin"]
    secret = photos["secret"][0]
    secret_id = point_id("secret", secret["sha256"])
    refused = [
        client.post("/v1/collections", json={"name": "elsewhere"}, headers=scoped),
        client.delete("/v1/collections/secret", headers=scoped),
        upload(site, "secret", photos["spare"][:1], headers=scoped),
        client.post("/v1/collections/secret/imports", json={"path": str(site["imports"])}, headers=scoped),
        client.delete(f"/v1/collections/secret/images/{secret_id}", headers=scoped),
        client.post("/v1/collections/secret/prune", json={"box": {"south": -90, "west": -180, "north": 90,
                                                                  "east": 180}}, headers=scoped),
        client.post("/v1/collections/secret/reembed", headers=scoped),
        client.get(f"/v1/collections/secret/images/{secret_id}/photo", headers=scoped),
        client.post("/v1/locate", files=photo_file(secret), data={"collections": "secret"}, headers=scoped),
        client.post("/v1/similar", files=photo_file(secret), data={"collections": "news,secret"}, headers=scoped),
    ]
    for response in refused:
        assert "manages only news" in expect_error(response, 403)["message"] or "may not search" in response.text
    listed = {c["name"]: c["photos"] for c in client.get("/v1/collections", headers=admin).json()["collections"]}
    assert listed["secret"] == 6 and "elsewhere" not in listed  # nothing happened
    assert [c["name"] for c in client.get("/v1/collections", headers=scoped).json()["collections"]] == ["news"]
    answer = client.post("/v1/locate", files=photo_file(secret), data={"k": "20"}, headers=scoped).json()
    assert answer["collections"] == ["news"] and {n["collection"] for n in answer["neighbours"]} == {"news"}
    # within its scope it is an admin like any other
    expect_error(client.post("/v1/collections", json={"name": "news"}, headers=scoped), 409)
    response = upload(site, "news", photos["spare"][:1], headers=scoped)
    assert response.status_code == 202, response.text
    assert follow({**site, "admin": scoped}, response.json()["job"]["id"])["done"] == 1


def test_an_admin_sees_only_the_jobs_its_own_key_started(site, photos):
    client, scoped, admin = site["client"], site["scoped"], site["admin"]
    theirs = site["jobs"]["news"]["id"]  # started by the fixture's admin key
    assert client.get(f"/v1/jobs/{theirs}", headers=admin).status_code == 200
    other_admin = bearer(site["services"].keys.create("admin", name="another desk")[1])
    for headers in (scoped, other_admin):  # told no more than of a job that does not exist
        error = expect_error(client.get(f"/v1/jobs/{theirs}", headers=headers), 404)
        assert error["code"] == "no_job" and site["jobs"]["news"]["owner"] not in error["message"]
    response = client.post("/v1/collections/news/images", headers=other_admin, files=[
        ("photos", ("again.jpg", photo_bytes(colour=(5, 6, 7)), "image/jpeg"))])
    mine = response.json()["job"]["id"]
    assert client.get(f"/v1/jobs/{mine}", headers=other_admin).json()["owner"] != client.get(
        f"/v1/jobs/{theirs}", headers=admin).json()["owner"]
    expect_error(client.get(f"/v1/jobs/{mine}", headers=admin), 404)
