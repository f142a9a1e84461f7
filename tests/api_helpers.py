"""The API under test: real photos uploaded through an in-process app over a real Edge gallery, and the
helpers the API test modules share (registered as a plugin in conftest, so the servers are built once)."""

from __future__ import annotations

import io
import time
from contextlib import contextmanager

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from geoloc.gallery.base import SearchFilter
from geoloc.embedding import Embedder
from geoloc.settings import Settings
from geoloc.ingest.records import sha256_hex
from geoloc.models.partition import adaptive_hierarchy
from geoloc.search_api.app import create_app
from geoloc.search_api.services import build_services
from tests.bundles import cell_probabilities, constructed_bundle
from tests.services import DATA, manifest_rows


MAX_PHOTO_BYTES = 128 << 10
MAX_BATCH = 8


def rows_with_bytes(n: int) -> list[dict]:
    """The first n dev-photo manifest rows, each with its bytes and their SHA-256."""
    rows = manifest_rows(n)
    for row in rows:
        row["bytes"] = (DATA / "images" / row["filename"]).read_bytes()
        row["sha256"] = sha256_hex(row["bytes"])
    return rows


@pytest.fixture(scope="package")
def photos():
    rows = rows_with_bytes(16)
    return {"news": rows[:6], "secret": rows[6:12], "spare": rows[12:]}


@contextmanager
def serving(home, imports, photos, embedder):
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
                job_id = upload(state, name, photos[name]).json()["job"]["id"]
                state["jobs"][name] = follow(state, job_id)
            yield state
    finally:
        services.close()


@pytest.fixture(scope="package")
def api(tmp_path_factory, photos, embedder):
    with serving(tmp_path_factory.mktemp("home"), tmp_path_factory.mktemp("imports"), photos, embedder) as state:
        yield state


@pytest.fixture(scope="package")
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
    with serving(tmp_path_factory.mktemp("swc-home"), tmp_path_factory.mktemp("swc-imports"), photos,
                  Embedder(embedder.backbone, bundle)) as state:
        yield {**state, "bundle": bundle}


def files_of(rows):
    return [("photos", (r["filename"], r["bytes"], "image/jpeg")) for r in rows]


def upload(state, collection, rows, headers=None):
    return state["client"].post(f"/v1/collections/{collection}/images", files=files_of(rows),
                                data={"lat": [r["lat"] for r in rows], "lon": [r["lon"] for r in rows]},
                                headers=headers or state["admin"])


def wait_for_job(client, headers, job_id, timeout_s=60):
    """The job's record once it has ended (succeeded, failed or cancelled)."""
    deadline = time.monotonic() + timeout_s
    while (job := client.get(f"/v1/jobs/{job_id}", headers=headers).json())["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, f"job {job_id} did not finish: {job}"
        time.sleep(0.05)
    return job


def follow(state, job_id, timeout_s=60):
    return wait_for_job(state["client"], state["admin"], job_id, timeout_s)


def where(collection):
    return SearchFilter(collections=[collection])


def photo_file(row):
    return {"photo": (row["filename"], row["bytes"], "image/jpeg")}


def expect_error(response, status):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["status"] == status and error["code"] and len(error["message"]) > 10
    return error


def png_bytes(width, height):
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buffer, "PNG")
    return buffer.getvalue()
