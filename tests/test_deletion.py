"""Deleting deletes everywhere: a deleted collection's queued and running jobs are cancelled and add nothing
afterwards; its photos leave every model's store; its stored originals (and files made from them) go unless
another collection, another model's store or an unfinished job still needs them. Refused uploads are never
kept, and the spool sweep (function, `geoloc maintenance sweep`, API start-up) removes what nothing needs.
Real app, real Edge gallery, real job stores and files."""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest
from fastapi.testclient import TestClient

from geoloc import job_store, retention
from geoloc.cli import main
from geoloc.gallery.base import GalleryPoint, SearchFilter, make_payload
from geoloc.gallery.edge import EdgeGallery
from geoloc.gallery.open import open_gallery
from geoloc.ingest.originals import OriginalStore
from geoloc.ingest.records import point_id, sha256_hex
from geoloc.jobs import InProcessRunner, JobContext, index_batch
from geoloc.search_api.app import create_app
from geoloc.search_api.services import build_services
from geoloc.settings import Settings
from tests.api_helpers import MAX_PHOTO_BYTES, files_of, rows_with_bytes, wait_for_job
from tests.photos import photo_bytes

HOUR = 3600


@pytest.fixture(scope="module")
def rows():
    return rows_with_bytes(6)


class GatedRunner(InProcessRunner):
    """The in-process runner whose batches wait at a gate while it is shut: a queue with no worker free yet."""

    def __init__(self, *args):
        super().__init__(*args)
        self.gate = threading.Event()
        self.gate.set()

    def _run(self, task, kwargs):
        self.gate.wait()
        super()._run(task, kwargs)


@contextmanager
def serving(home, embedder, **overrides):
    settings = Settings(**{**dict(home=home, broker_url=None, qdrant_url=None, gallery_shared=False, bundle=None,
                                  require_keys=True, job_batch=4, max_photo_bytes=MAX_PHOTO_BYTES), **overrides})
    services = build_services(settings, embedder)
    runner = services.jobs.runner = GatedRunner(services.runtime.job_context, services.jobs.store)
    try:
        _, token = services.keys.create("admin", name="tests")
        with TestClient(create_app(services=services)) as client:
            yield client, {"Authorization": f"Bearer {token}"}, services, runner
    finally:
        runner.gate.set()
        runner.close()
        services.close()


def upload(client, admin, collection, rows, **data):
    data = data or {"lat": [r["lat"] for r in rows], "lon": [r["lon"] for r in rows]}
    response = client.post(f"/v1/collections/{collection}/images", files=files_of(rows), data=data, headers=admin)
    assert response.status_code == 202, response.text
    return response.json()["job"]["id"]


def stored(services) -> set[str]:
    return {f.digest for f in services.originals.files()}  # a photo and the files made from it


def test_deleting_a_collection_cancels_its_jobs_and_removes_it_everywhere(tmp_path, rows, embedder):
    kept_photos, doomed_photos = rows[:2], [rows[1], rows[2], rows[3], rows[5]]
    with serving(tmp_path / "home", embedder) as (client, admin, services, runner):
        for name in ("kept", "doomed", "other"):
            assert client.post("/v1/collections", json={"name": name}, headers=admin).status_code == 201
        for name, photos in (("kept", kept_photos), ("doomed", doomed_photos)):
            assert wait_for_job(client, admin, upload(client, admin, name, photos))["done"] == len(photos)
        thumbnail = services.originals.find(rows[3]["sha256"]).with_name(rows[3]["sha256"] + ".thumb.jpg")
        thumbnail.write_bytes(b"a thumbnail made from the original")
        # another model's store holds 'doomed' too, and is the only one to hold rows[5] for 'kept'
        with open_gallery(services.settings, 8, "another-model") as other:
            other.upsert([GalleryPoint(point_id(collection, row["sha256"]), np.ones(8),
                                       make_payload(collection, 10, 20, "x.jpg", "another-model", row["sha256"]))
                          for collection, row in (("doomed", rows[3]), ("kept", rows[5]))])
        runner.gate.clear()
        queued = upload(client, admin, "doomed", [rows[4]])  # waits for a worker
        needing = upload(client, admin, "other", [rows[2]])  # another collection's job needs rows[2]'s copy

        assert client.delete("/v1/collections/doomed", headers=admin).json() == {"deleted": 4}
        job = client.get(f"/v1/jobs/{queued}", headers=admin).json()
        assert job["state"] == "cancelled" and "'doomed' was deleted" in job["error"] and job["finished"]
        assert client.get(f"/v1/jobs/{needing}", headers=admin).json()["state"] == "queued"
        assert client.get("/v1/collections/doomed", headers=admin).status_code == 404
        stores = services.runtime.every_store()
        assert len(stores) == 2 and all("doomed" not in store.collections() for store in stores)
        assert sorted(store.collections()["kept"] for store in stores) == [1, 2]
        assert stored(services) == {rows[i]["sha256"] for i in (0, 1, 2, 5)}  # 3 (and its thumbnail), 4 went

        runner.gate.set()  # the queued batch starts after the delete: it does nothing
        # the cancelled job has ended already; one worker runs batches in order, so `needing` ending means
        # the cancelled job's batch has run
        assert wait_for_job(client, admin, needing)["state"] == "succeeded"
        job = client.get(f"/v1/jobs/{queued}", headers=admin).json()
        assert (job["state"], job["batches_done"], job["skipped"], job["reasons"]) == ("cancelled", 1, 1,
                                                                                         {"cancelled": 1})
        assert services.gallery().count(SearchFilter(collections=["doomed"])) == 0
        names = [c["name"] for c in client.get("/v1/collections", headers=admin).json()["collections"]]
        assert names == ["kept", "other"]


class DeletedMidWrite(EdgeGallery):
    """A gallery in which another request deletes the collection between a batch's last look at its job and
    its write: the batch's check came too early to stop the write."""

    meanwhile = None

    def upsert(self, points):
        if self.meanwhile is not None:
            self.meanwhile, meanwhile = None, self.meanwhile
            meanwhile()
        super().upsert(points)


def test_a_batch_writing_when_its_collection_is_deleted_undoes_its_writes(tmp_path, rows, embedder):
    settings = Settings(home=tmp_path, qdrant_url=None, broker_url=None, bundle=None)
    originals, jobs = OriginalStore(settings.spool_dir), job_store.FileJobStore(settings.jobs_dir)
    gallery = DeletedMidWrite(settings.gallery_dir, embedder.dim)
    ctx = JobContext(settings, embedder, gallery, jobs, stores=lambda: [gallery])
    items, digests = [], []
    for row in rows[:2]:
        digest, path = originals.put(row["bytes"])
        items.append({"path": str(path), "source": row["filename"], "lat": row["lat"], "lon": row["lon"]})
        digests.append(digest)
    job_id = jobs.create("upload", "news", 2, 1, "k1", originals=digests)
    gallery.meanwhile = lambda: retention.delete_collection([gallery], jobs, originals, "news")
    index_batch(ctx, job_id, 1, "news", items, [str(originals.directory)])
    assert gallery.count(SearchFilter(collections=["news"])) == 0
    job = jobs.get(job_id)
    assert (job["state"], job["batches_done"], job["reasons"]) == ("cancelled", 1, {"cancelled": 2})
    assert not list(originals.files())
    gallery.close()


def test_refused_uploads_are_never_kept(tmp_path, rows, embedder):
    plain = photo_bytes(colour=(1, 2, 3))  # no EXIF GPS
    with serving(tmp_path / "home", embedder) as (client, admin, services, _):
        for name in ("a", "b"):
            assert client.post("/v1/collections", json={"name": name}, headers=admin).status_code == 201
        batch = [("good.jpg", rows[0]["bytes"], rows[0]["lat"], rows[0]["lon"]),
                 ("corrupt.jpg", b"\xff\xd8\xff\xe0 not a photo", "1", "2"),
                 ("no_gps.jpg", photo_bytes(colour=(7, 7, 7)), "", ""),
                 ("nowhere.jpg", photo_bytes(colour=(8, 8, 8)), "123", "45"),
                 ("huge.jpg", b"\xff" * (MAX_PHOTO_BYTES + 1), "", ""),
                 ("plain.jpg", plain, "12", "34")]
        response = client.post("/v1/collections/a/images", files=[("photos", (n, b, "image/jpeg")) for n, b, _, _ in batch],
                               data={"lat": [r[2] for r in batch], "lon": [r[3] for r in batch]}, headers=admin)
        job = wait_for_job(client, admin, response.json()["job"]["id"])
        assert (job["done"], job["skipped"]) == (2, 4)
        assert stored(services) == {rows[0]["sha256"], sha256_hex(plain)}
        # refused in 'b' (no coordinates, no EXIF GPS), but 'a' holds the same photo: its copy stays
        job = wait_for_job(client, admin, upload(client, admin, "b", [{"filename": "plain.jpg", "bytes": plain}],
                                          lat=[""], lon=[""]))
        assert job["reasons"] == {"no_gps": 1} and stored(services) == {rows[0]["sha256"], sha256_hex(plain)}


def _age(path, seconds):
    when = time.time() - seconds
    os.utime(path, (when, when))


def test_the_sweep_removes_what_nothing_needs_by_age_and_size(tmp_path, rows, embedder, monkeypatch):
    home = tmp_path / "home"
    with serving(home, embedder) as (client, admin, services, _):
        assert client.post("/v1/collections", json={"name": "news"}, headers=admin).status_code == 201
        wait_for_job(client, admin, upload(client, admin, "news", rows[:1]))
    originals, jobs = OriginalStore(home / "spool"), job_store.FileJobStore(home / "jobs")
    indexed = originals.find(rows[0]["sha256"])
    old, _ = originals.put(b"unneeded for two hours")
    needed, _ = originals.put(b"read by a queued job")
    jobs.create("upload", "news", 1, 1, "k1", originals=[needed])
    derived = originals.find(old).with_name(old + ".thumb.jpg")
    derived.write_bytes(b"made from it")
    partial = originals.directory / "ab" / ".upload-cut-short"
    partial.parent.mkdir(exist_ok=True)
    partial.write_bytes(b"half")
    for path in (indexed, originals.find(old), originals.find(needed), derived, partial):
        _age(path, 2 * HOUR)
    young = [originals.put(f"young {i}".encode())[0] for i in range(3)]
    for i, digest in enumerate(young):
        _age(originals.find(digest), 60 - i)  # oldest first

    for name in [n for n in os.environ if n.startswith("GEOLOC_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("GEOLOC_HOME", str(home))
    assert main(["maintenance", "sweep"]) == 0
    left = {f.digest for f in originals.files()}
    assert left == {rows[0]["sha256"], needed, *young}
    assert main(["maintenance", "sweep", "--max-bytes", "10"]) == 0  # the young ones weigh 21 bytes: 2 go
    assert {f.digest for f in originals.files()} == left - {young[0], young[1]}

    stale, _ = originals.put(b"left by an earlier run")
    _age(originals.find(stale), 2 * HOUR)
    with serving(home, embedder, spool_max_age=HOUR):  # the API sweeps as it starts
        deadline = time.monotonic() + 30
        while originals.find(stale) is not None:
            assert time.monotonic() < deadline, "the start-up sweep did not run"
            time.sleep(0.05)
    assert originals.find(rows[0]["sha256"])
    assert originals.find(needed) is None  # its job was failed at the restart: nothing needs it now


def test_job_stores_cancel_and_know_what_unfinished_jobs_need(store):
    doomed = store.create("upload", "doomed", 2, 2, "k1", originals=["a" * 64, "b" * 64])
    other = store.create("upload", "other", 1, 1, "k1", originals=["b" * 64, "c" * 64])
    done = store.create("prune", "doomed", 0, 1, "k1")
    store.finish(done, 1, job_store.Outcome())
    assert {job["id"] for job in store.unfinished()} == {doomed, other}
    assert job_store.needed_originals(store) == {"a" * 64, "b" * 64, "c" * 64}
    assert job_store.needed_originals(store, but=other) == {"a" * 64, "b" * 64}

    cancelled = job_store.cancel_collection(store, "doomed", "the collection 'doomed' was deleted")
    assert [job["id"] for job in cancelled] == [doomed] and store.is_cancelled(doomed)
    assert not store.cancel(doomed, "again") and not store.cancel(done, "finished jobs stay as they ended")
    assert store.get(done)["state"] == "succeeded"
    assert store.finish(doomed, 1, job_store.cancelled_outcome(1))
    job = store.get(doomed)
    assert (job["state"], job["error"], job["skipped"]) == ("cancelled", "the collection 'doomed' was deleted", 1)
    assert [job["id"] for job in store.unfinished()] == [other]
    assert job_store.needed_originals(store) == {"b" * 64, "c" * 64}
    store.finish(other, 1, job_store.Outcome(done=1))
    assert store.unfinished() == []
