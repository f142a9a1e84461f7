"""The whole platform as separate processes: redis-server, Celery workers and the API under uvicorn,
spoken to over HTTP, on one embedded gallery that the API holds open and lends the workers through its
socket in the data home (gallery/lending.py, gallery/remote.py, GEOLOC_GALLERY_VIA_API).

Real photos go in through the API, workers embed them, and the answers come back over HTTP; a worker
killed with SIGKILL in the middle of a job loses nothing and duplicates nothing, even a batch the broker
dropped; no worker ever opens the gallery's files.
"""

from __future__ import annotations

import json
import subprocess

import httpx
import pytest
import redis

from geoloc.gallery.base import SearchFilter
from geoloc.gallery.open import OWNER_SOCKET
from geoloc.gallery.remote import OwnedGalleryClient
from geoloc.ingest.records import point_id, sha256_hex
from geoloc.deliveries import FRONT
from geoloc.task_queue import QUEUE
from tests.services import (DATA, INTERNAL_TOKEN, REPO, beside, free_port, geoloc, manifest_rows, service_env,
                            sessions_files, start_api, start_worker, wait_until)

N_PHOTOS = 50
TASK_TIME_LIMIT = 20  # seconds; a killed worker's batch comes back after 25 (the visibility timeout)
PHOTOS_PER_TASK = 5


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url):
    """API, one worker, an admin key; yields what the tests need and stops everything after."""
    home = tmp_path_factory.mktemp("home")
    logs = tmp_path_factory.mktemp("logs")
    env = service_env(home, redis_url, GEOLOC_TASK_TIME_LIMIT=TASK_TIME_LIMIT, GEOLOC_JOB_BATCH=PHOTOS_PER_TASK,
                      GEOLOC_BATCH_SIZE=PHOTOS_PER_TASK)
    token = subprocess.run(geoloc("keys", "create", "--admin", "--name", "integration"), env=env, cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.strip()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    workers_env = beside(env)  # started first, the worker waits for the API on its first task
    state = {"env": workers_env, "logs": logs, "home": home, "url": url, "workers": [start_worker(workers_env, logs)]}
    api, _ = start_api(env, logs, port)
    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120)
    state.update(client=client, api=api)
    try:
        yield state
    finally:
        client.close()
        for worker in state["workers"]:
            worker.stop()
        api.stop()


@pytest.fixture(scope="module")
def photos():
    rows = manifest_rows(N_PHOTOS)
    for row in rows:
        row["bytes"] = (DATA / "images" / row["filename"]).read_bytes()
        row["sha256"] = sha256_hex(row["bytes"])
    return rows


def upload(client: httpx.Client, collection: str, rows: list[dict]) -> str:
    assert client.post("/v1/collections", json={"name": collection}).status_code == 201
    files = [("photos", (r["filename"], r["bytes"], "image/jpeg")) for r in rows]
    response = client.post(f"/v1/collections/{collection}/images", files=files,
                           data={"lat": [r["lat"] for r in rows], "lon": [r["lon"] for r in rows]})
    assert response.status_code == 202, response.text
    body = response.json()
    assert response.headers["location"] == f"/v1/jobs/{body['job']['id']}"
    assert [p["status"] for p in body["photos"]] == ["queued"] * len(rows)
    return body["job"]["id"]


def follow(stack, job_id: str, timeout_s: float = 240) -> dict:
    def finished():
        for service in [stack["api"], *stack["workers"][-1:]]:
            assert service.alive(), f"{service.name} exited:\n{service.log_tail()}"
        job = stack["client"].get(f"/v1/jobs/{job_id}").json()
        return job if job["state"] in ("succeeded", "failed") else None

    try:
        return wait_until(finished, timeout_s, f"job {job_id}", poll_s=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nworker log:\n{stack['workers'][-1].log_tail()}") from None


def collection_counts(client: httpx.Client) -> dict[str, int]:
    return {c["name"]: c["photos"] for c in client.get("/v1/collections").json()["collections"]}


def test_ready_with_gallery_and_broker(stack):
    response = stack["client"].get("/readyz")
    assert response.status_code == 200, response.text
    checks = response.json()["checks"]
    assert (checks["gallery"], checks["broker"]) == ("ok", "ok"), checks


def test_upload_follow_locate_prune_count(stack, photos):
    client = stack["client"]
    job = follow(stack, upload(client, "dev", photos))
    assert job["state"] == "succeeded", job
    assert (job["total"], job["done"], job["skipped"], job["failed"]) == (N_PHOTOS, N_PHOTOS, 0, 0)
    assert job["batches_done"] == job["batches"] == N_PHOTOS // PHOTOS_PER_TASK
    assert collection_counts(client)["dev"] == N_PHOTOS

    query = photos[7]
    response = client.post("/v1/locate", files={"photo": (query["filename"], query["bytes"], "image/jpeg")},
                           data={"k": "5", "collections": "dev"})
    assert response.status_code == 200, response.text
    answer = response.json()
    top = answer["neighbours"][0]
    assert top["id"] == point_id("dev", query["sha256"]) and top["source"] == query["filename"]
    assert top["similarity"] > 0.99
    assert (top["lat"], top["lon"]) == pytest.approx((float(query["lat"]), float(query["lon"])))
    audit = [json.loads(line) for line in (stack["home"] / "audit.jsonl").read_text().splitlines()]
    assert audit[-1]["endpoint"] == "locate" and audit[-1]["collections"] == ["dev"]

    # prune every photo of the dev slice in Europe
    box = {"south": 35.0, "west": -11.0, "north": 71.0, "east": 40.0}
    in_box = [r for r in photos if box["south"] <= float(r["lat"]) <= box["north"]
              and box["west"] <= float(r["lon"]) <= box["east"]]
    assert 0 < len(in_box) < N_PHOTOS
    response = client.post("/v1/collections/dev/prune", json={"box": box})
    assert response.status_code == 202, response.text
    job = follow(stack, response.json()["job"]["id"])
    assert job["state"] == "succeeded" and job["removed"] == len(in_box)
    assert collection_counts(client)["dev"] == N_PHOTOS - len(in_box)

    kept = next(r for r in photos if r not in in_box)
    assert client.delete(f"/v1/collections/dev/images/{kept['sha256']}").json() == {"deleted": 1}
    assert client.delete(f"/v1/collections/dev/images/{kept['sha256']}").status_code == 404
    assert collection_counts(client)["dev"] == N_PHOTOS - len(in_box) - 1


def test_job_survives_a_killed_worker(stack, photos):
    client = stack["client"]
    job_id = upload(client, "killed", photos)

    def some_batches_done():
        job = client.get(f"/v1/jobs/{job_id}").json()
        return job if job["batches_done"] >= 1 else None

    wait_until(some_batches_done, 240, "the first batch")
    stack["workers"][-1].kill()
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["batches_done"] < job["batches"], "the job finished before the worker could be killed"
    # and one more batch dropped as a worker killed between taking it and recording it as unacknowledged
    # does: the broker never hands it back, the API finds it lost and sends it again (geoloc.deliveries)
    broker = redis.Redis.from_url(stack["env"]["GEOLOC_BROKER_URL"])
    dropped = broker.rpop(QUEUE)
    assert dropped is not None, "no batch left queued to drop"
    _, batch, send = json.loads(dropped)["headers"]["id"].split(":")

    stack["workers"].append(start_worker(stack["env"], stack["logs"], name="worker-2"))
    job = follow(stack, job_id)
    assert job["state"] == "succeeded", job
    assert (job["done"], job["skipped"], job["failed"]) == (N_PHOTOS, 0, 0)  # no batch counted twice

    with OwnedGalleryClient(stack["home"] / OWNER_SOCKET, INTERNAL_TOKEN) as gallery:  # the store serving queries, via the API
        ids = [hit.id for hit in gallery.scroll(SearchFilter(collections=["killed"]), batch=7)]
    assert sorted(ids) == sorted(point_id("killed", r["sha256"]) for r in photos)
    assert collection_counts(client)["killed"] == N_PHOTOS
    sent_again = [line for line in stack["api"].log.read_text().splitlines() if "sending it again" in line]
    # the dropped batch, and no other but the killed worker's own when the kill fell between its taking that batch
    # from the queue and recording it as unacknowledged: the window geoloc.deliveries exists for (a batch takes
    # 0.07 s here, so the kill lands in it now and then)
    assert f"batch {batch} of job {job_id} was lost by the broker: sending it again" in sent_again, sent_again
    assert len(sent_again) <= 2, sent_again
    assert broker.zscore(FRONT, "front") > int(send)  # the workers recorded the sends they took, the new one too
    broker.close()


def test_only_the_api_opens_the_gallery(stack):
    """The workers ran every job above through the API: none of them holds or maps a file of the gallery."""
    gallery_dir = stack["home"] / "gallery"
    assert any("/shard/" in path for path in sessions_files(stack["api"].process.pid, gallery_dir))
    for worker in stack["workers"]:
        if worker.alive():
            assert sessions_files(worker.process.pid, gallery_dir) == set(), worker.name
    assert not (gallery_dir / "gallery.lock").exists()  # nothing took turns on the shard either
