"""Job core: progress counted once per batch in both stores, idempotent tasks, prune policies, import
roots, and the Celery wrappers' retry and delivery settings."""

from __future__ import annotations

import os
import uuid
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from geoloc.gallery.base import SearchFilter
from geoloc.gallery.edge import EdgeGallery
from geoloc import job_store, jobs
from geoloc.cells import leaf_int64
from geoloc.embedding import Embedder
from geoloc.settings import Settings
from geoloc.ingest.records import ORIGINAL
from geoloc.ingest.sources import SourceError
from geoloc.models.backbone import Backbone
from geoloc.models.partition import adaptive_hierarchy
from tests.bundles import cell_probabilities, constructed_bundle
from tests.photos import photo_bytes


def test_progress_counts_each_batch_once(store):
    pre = job_store.Outcome()
    pre.skip("dup.jpg", "duplicate_photo")
    job_id = store.create("upload", "news", total=5, batches=2, owner="k1", pre=pre)
    assert store.get(job_id)["state"] == "queued"
    store.mark_started(job_id)
    assert store.finish(job_id, 1, job_store.Outcome(done=2))
    assert not store.finish(job_id, 1, job_store.Outcome(done=2))  # a redelivered batch
    job = store.get(job_id)
    assert (job["state"], job["done"], job["skipped"], job["batches_done"]) == ("running", 2, 1, 1)
    second = job_store.Outcome(done=1)
    second.skip("b.jpg", "no_gps")
    store.finish(job_id, 2, second)
    job = store.get(job_id)
    assert (job["state"], job["done"], job["skipped"]) == ("succeeded", 3, 2)
    assert job["reasons"] == {"duplicate_photo": 1, "no_gps": 1} and job["finished"]
    assert store.get(str(uuid.uuid4())) is None


def test_a_batch_given_up_fails_the_job_with_its_reason(store):
    job_id = store.create("upload", "news", total=3, batches=1, owner="k1")
    jobs.give_up(store, {"job_id": job_id, "batch": 1, "items": [{}, {}, {}]}, "gallery_unavailable",
                 "cannot reach the Qdrant server")
    job = store.get(job_id)
    assert (job["state"], job["failed"], job["error"]) == ("failed", 3, "cannot reach the Qdrant server")


def test_unfinished_in_process_jobs_fail_at_restart(tmp_path):
    store = job_store.FileJobStore(tmp_path)
    job_id = store.create("upload", "news", total=4, batches=2, owner="k1")
    store.finish(job_id, 1, job_store.Outcome(done=2))
    assert store.interrupt_unfinished("the server stopped") == 1
    job = store.get(job_id)
    assert (job["state"], job["done"], job["error"]) == ("failed", 2, "the server stopped")
    assert store.get("../../etc/passwd") is None


@pytest.fixture
def ctx(tmp_path, embedder):
    settings = Settings(home=tmp_path, broker_url=None, qdrant_url=None, bundle=None, batch_size=4)
    gallery = EdgeGallery(tmp_path / "gallery", embedder.dim)
    yield jobs.JobContext(settings, embedder, gallery, job_store.FileJobStore(tmp_path / "jobs"))
    gallery.close()


def _items(tmp_path, n):
    items = []
    for i in range(n):
        path = tmp_path / f"p{i}.jpg"
        path.write_bytes(photo_bytes(colour=(20 * i, 100, 200 - 10 * i)))
        items.append({"path": str(path), "source": path.name, "lat": 10 + i, "lon": 20 + i})
    return items


def test_index_batch_redone_changes_nothing(ctx, tmp_path):
    items = _items(tmp_path, 5) + [{"path": str(tmp_path / "gone.jpg"), "source": "gone.jpg", "lat": 1, "lon": 1}]
    job_id = ctx.jobs.create("upload", "news", total=6, batches=1, owner="k1")
    for _ in range(2):  # the same message delivered twice
        jobs.index_batch(ctx, job_id, 1, "news", items)
    assert ctx.gallery.count() == 5
    job = ctx.jobs.get(job_id)
    assert (job["done"], job["skipped"], job["reasons"]) == (5, 1, {"missing_file": 1})
    originals = {(ctx.settings.spool_dir / h.payload["extra"][ORIGINAL]).read_bytes() for h in ctx.gallery.scroll()}
    assert originals == {Path(i["path"]).read_bytes() for i in items[:5]}  # geoloc's own copies


def test_reembed_rewrites_vectors_from_originals(ctx, tmp_path):
    items = _items(tmp_path, 3)
    jobs.index_batch(ctx, ctx.jobs.create("upload", "news", 3, 1, "k1"), 1, "news", items)
    ids = [h.id for h in ctx.gallery.scroll()]
    os.remove(ctx.settings.spool_dir / next(ctx.gallery.scroll()).payload["extra"][ORIGINAL])
    first_model = ctx.embedder.model_id
    ctx = replace(ctx, embedder=Embedder(Backbone(pretrained="none")))  # another model: random weights
    job_id = ctx.jobs.create("reembed", "news", 3, 1, "k1")
    jobs.reembed_batch(ctx, job_id, 1, "news", ids)
    job = ctx.jobs.get(job_id)
    assert (job["done"], job["skipped"], job["reasons"]) == (2, 1, {"no_original": 1})
    second_model = ctx.embedder.model_id
    assert sorted(h.payload["model"] for h in ctx.gallery.scroll()) == sorted([first_model] + [second_model] * 2)


def test_prune_unplaceable_removes_photos_the_classifier_puts_elsewhere(ctx, tmp_path):
    items = _items(tmp_path, 4)
    lat, lon = (np.array([i[c] for i in items], dtype=float) for c in ("lat", "lon"))
    hierarchy = adaptive_hierarchy(lat, lon, (1, 2, 3))
    cells = hierarchy.fine.assign(lat, lon)
    home = cells[0]
    placeable = {i["source"] for i, cell in zip(items, cells) if cell == home}
    assert cells.min() >= 0 and len(placeable) == 2  # the first cell holds two photos, the other two one each
    # a classifier that puts every photo in the first photo's cell: the photos of the other cells are unplaceable
    probs = cell_probabilities(len(hierarchy.fine), {int(home): 0.9})
    bundle = constructed_bundle(tmp_path / "bundle", ctx.embedder.backbone, hierarchy, probs)
    ctx = replace(ctx, embedder=Embedder(ctx.embedder.backbone, bundle))
    jobs.index_batch(ctx, ctx.jobs.create("upload", "news", 4, 1, "k1"), 1, "news", items)
    assert {h.payload["model"] for h in ctx.gallery.scroll()} == {bundle.model_id}
    job_id = ctx.jobs.create("prune", "news", 4, 1, "k1")
    jobs.prune_unplaceable(ctx, job_id, 1, "news", [h.id for h in ctx.gallery.scroll()])
    job = ctx.jobs.get(job_id)
    assert (job["done"], job["removed"]) == (4, 2)
    assert {h.payload["source"] for h in ctx.gallery.scroll()} == placeable


def test_prune_region_and_the_planner(ctx, tmp_path):
    jobs.index_batch(ctx, ctx.jobs.create("upload", "news", 5, 1, "k1"), 1, "news", _items(tmp_path, 5))
    runner = jobs.InProcessRunner(lambda: ctx, ctx.jobs)
    planner = jobs.Jobs(ctx.jobs, runner, batch_size=2)
    job_id = planner.prune(ctx.gallery, "news", "k1", box=[9.5, 19.5, 11.5, 21.5])  # photos 0 and 1
    runner.close()  # finishes the queued batch first
    job = planner.get(job_id)
    assert (job["state"], job["total"], job["removed"]) == ("succeeded", 2, 2)
    assert ctx.gallery.count(SearchFilter(collections=["news"])) == 3
    assert leaf_int64(12, 22) in {h.payload["s2"] for h in ctx.gallery.scroll()}


def test_the_in_process_runner_turns_errors_into_a_failed_batch(ctx):
    runner = jobs.InProcessRunner(lambda: ctx, ctx.jobs)
    job_id = ctx.jobs.create("prune", "news", 0, 1, "k1")
    runner.submit("geoloc.prune_unplaceable", [{"job_id": job_id, "batch": 1, "collection": "news", "ids": []}])
    runner.close()
    job = ctx.jobs.get(job_id)
    assert job["state"] == "failed" and "needs a model bundle" in job["error"]


def test_imports_only_under_the_roots(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "escape").symlink_to(outside)
    with pytest.raises(PermissionError, match="GEOLOC_IMPORT_ROOTS"):
        jobs.check_import_path(root, [])
    with pytest.raises(PermissionError, match="not under an import root"):
        jobs.check_import_path(root / "escape", [root.resolve()])
    with pytest.raises(PermissionError):
        jobs.check_import_path(root / ".." / "outside", [root.resolve()])
    with pytest.raises(SourceError, match="no such file"):
        jobs.check_import_path(root / "missing.csv", [root.resolve()])
    assert jobs.check_import_path(root, [root.resolve()]) == root.resolve()


class _Retry(Exception):
    pass


def _task(retries):
    def retry(exc, countdown):
        raise _Retry(countdown)

    return SimpleNamespace(request=SimpleNamespace(retries=retries), retry=retry)


def test_worker_retries_while_the_gallery_is_unreachable_then_fails_the_batch(tmp_path, monkeypatch, embedder):
    """A worker's runtime pointed at a Qdrant server that is not there: the real open fails, the task retries
    with backoff, and after the last retry the batch fails with the reason."""
    from geoloc.runtime import Runtime
    from geoloc.workers import tasks

    settings = Settings(home=tmp_path, qdrant_url="http://127.0.0.1:9", qdrant_timeout=1)
    runtime = Runtime(settings, embedder)
    store = runtime.job_store()
    job_id = store.create("upload", "news", 2, 1, "k1")
    monkeypatch.setattr(tasks, "runtime", lambda: runtime)
    kwargs = {"job_id": job_id, "batch": 1, "collection": "news", "items": [{}, {}]}
    with pytest.raises(_Retry) as retried:
        tasks._run(_task(0), jobs.index_batch, kwargs)
    assert retried.value.args == (1,)
    assert store.get(job_id)["state"] == "queued"
    tasks._run(_task(settings.task_retries), jobs.index_batch, kwargs)
    job = store.get(job_id)
    assert (job["state"], job["failed"], job["reasons"]) == ("failed", 2, {"gallery_unavailable": 2})


def test_celery_delivery_settings():
    from geoloc.task_queue import make_celery

    settings = Settings(broker_url="redis://127.0.0.1:1/0", task_time_limit=600)
    conf = make_celery(settings).conf
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.task_soft_time_limit < conf.task_time_limit == 600
    visibility = conf.broker_transport_options["visibility_timeout"]
    assert 600 < visibility <= 700
