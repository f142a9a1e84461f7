"""Hostile input end to end: every kind of bad input in tests/hostile_cases.py, walked through every ingest
path it can reach, each photo's outcome (indexed, or the exact skip reason) and each collection's count
checked against the case table.

The paths: `geoloc index` on a folder and on a manifest (its own process, with a timeout, so a blocked read
fails the test; no import roots: the command line reads the user's own disk), a multipart upload
(`POST /v1/collections/{name}/images`) and an import of a folder or a manifest under GEOLOC_IMPORT_ROOTS
(`POST /v1/collections/{name}/imports`). The command line indexes the whole corpus in one run per source
(each case's photos under `<kind>/`); the API gives each case and path a collection of its own, so its count
is the case's alone. One API app and two CLI runs serve the whole module. Where a kind cannot reach a path
(a FIFO cannot be uploaded), the case table says why.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from geoloc.gallery.base import GalleryPoint, make_payload
from geoloc.gallery.edge import EdgeGallery
from geoloc.ingest.records import point_id, sha256_hex
from geoloc.ingest.sources import load_photo
from tests.api_helpers import MAX_BATCH, MAX_PHOTO_BYTES, expect_error, follow, serving, where
from tests.hostile_cases import BROKEN_MANIFESTS, CASES, write_broken_manifest
from tests.hostile_corpus import INDEXED, PATHS, build_corpus, not_applicable
from tests.hostile_files import Photos, finishes
from tests.services import REPO, geoloc, wait_until

CLI_TIMEOUT_S = 300  # loads the model, then reads the corpus: a blocked read shows as a timeout
MAX_PIXELS = 4_000_000  # as the API under test (tests/api_helpers.py)
CLI_SOURCES = {"cli_folder": "corpus-folder", "cli_manifest": "corpus-manifest"}
API_PREFIX = {"upload": "up", "import_folder": "if", "import_manifest": "im"}
pytestmark = pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")  # malformed_exif_block, as meant


def applicable(paths) -> list:
    return [pytest.param(case, path, id=f"{case.kind}-{path}") for case in CASES for path in paths
            if not not_applicable(case, path)]


def test_the_table_covers_forty_kinds_and_says_why_a_path_is_left_out():
    kinds = [case.kind for case in CASES] + list(BROKEN_MANIFESTS)
    assert len(kinds) == len(set(kinds)) >= 40
    for case in CASES:
        for path in PATHS:
            reason = not_applicable(case, path)
            assert reason is None or len(reason) > 20, (case.kind, path)
    assert all(len(applicable([path])) >= 40 for path in PATHS)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(CASES, tmp_path_factory.mktemp("imports") / "corpus", tmp_path_factory.mktemp("outside"),
                        MAX_PHOTO_BYTES)


# ------------------------------------------------------------------------------------------ command line

@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEOLOC_")}
    env.update(GEOLOC_HOME=str(tmp_path_factory.mktemp("cli")), GEOLOC_DEVICE="cpu", GEOLOC_BATCH_SIZE="16",
               GEOLOC_MAX_PHOTO_BYTES=str(MAX_PHOTO_BYTES), GEOLOC_MAX_PIXELS=str(MAX_PIXELS),
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def run_cli(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(geoloc(*args), env=env, cwd=REPO, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)


@pytest.fixture(scope="module")
def cli_runs(corpus, cli_env):
    """Each CLI source indexed once: its report, and every photo's (source, outcome) sorted by case."""
    runs = {}
    for path, collection in CLI_SOURCES.items():
        source = corpus.folder if path == "cli_folder" else corpus.manifest()
        done = run_cli(cli_env, "index", str(source), "--collection", collection, "--json")
        assert done.returncode == 0, done.stderr[-3000:]
        report = json.loads(done.stdout)
        gallery = EdgeGallery(Path(cli_env["GEOLOC_HOME"]) / "gallery")
        try:
            hits = list(gallery.scroll(where(collection)))
        finally:
            gallery.close()
        kind_of = {source: kind for kind, pairs in corpus.expected[path].items() for source, _ in pairs}
        outcomes: dict[str, list] = {}
        for source, outcome in ([(i["source"], i["reason"]) for i in report["skipped_items"]]
                                + [(h.payload["source"], INDEXED) for h in hits]):
            outcomes.setdefault(kind_of.get(source, "unexpected"), []).append((source, outcome))
        runs[path] = {"report": report, "hits": hits, "outcomes": {k: sorted(v) for k, v in outcomes.items()}}
    return runs


@pytest.mark.parametrize("path", CLI_SOURCES)
def test_cli_indexes_the_whole_corpus_in_one_run_and_counts_it_exactly(corpus, cli_runs, path):
    run = cli_runs[path]
    assert "unexpected" not in run["outcomes"]
    indexed = sum(outcome == INDEXED for pairs in corpus.expected[path].values() for _, outcome in pairs)
    assert run["report"]["indexed"] == run["report"]["in_collection"] == len(run["hits"]) == indexed


@pytest.mark.parametrize("case,path", applicable(CLI_SOURCES))
def test_cli_outcome_of_each_kind(corpus, cli_runs, case, path):
    assert cli_runs[path]["outcomes"].get(case.kind, []) == corpus.expected[path][case.kind]


@pytest.fixture(scope="module")
def broken_manifests(corpus):
    folder = corpus.root / "broken"
    folder.mkdir()
    return {kind: write_broken_manifest(folder / f"{kind}.csv", content)
            for kind, (content, _) in BROKEN_MANIFESTS.items()}


def test_cli_stops_on_a_manifest_it_cannot_read_naming_it(broken_manifests, cli_env):
    running = {kind: subprocess.Popen(geoloc("index", str(path), "--collection", "broken"), env=cli_env, cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for kind, path in broken_manifests.items()}
    for kind, process in running.items():
        _, stderr = process.communicate(timeout=CLI_TIMEOUT_S)
        assert process.returncode == 2, (kind, stderr)
        assert stderr.startswith(f"geoloc: error: {broken_manifests[kind]}"), (kind, stderr)
        assert BROKEN_MANIFESTS[kind][1] in stderr, (kind, stderr)


# ------------------------------------------------------------------------------------------------- API

def _submit(state, corpus, case, path: str, collection: str):
    client, admin = state["client"], state["admin"]
    assert client.post("/v1/collections", json={"name": collection}, headers=admin).status_code == 201
    if path != "upload":
        source = corpus.folder / case.kind if path == "import_folder" else corpus.manifest(case.kind)
        return client.post(f"/v1/collections/{collection}/imports", json={"path": str(source)}, headers=admin)
    parts = corpus.parts[case.kind]
    given = any(p.lat or p.lon for p in parts)
    form = {"lat": [p.lat for p in parts], "lon": [p.lon for p in parts]} if given else None
    return client.post(f"/v1/collections/{collection}/images", headers=admin, data=form,
                       files=[("photos", (p.filename, p.data, "image/jpeg")) for p in parts])


@pytest.fixture(scope="module")
def corpus_api(corpus, photos, embedder, tmp_path_factory):
    """One app over the corpus's import root; every case's uploads and imports queued, then followed. Its
    admin key has quotas wide enough for a few hundred requests a minute."""
    with serving(tmp_path_factory.mktemp("home"), corpus.root.parent, photos, embedder) as state:
        _, token = state["services"].keys.create("admin", name="corpus", requests_per_minute=100_000,
                                                 photos_per_hour=100_000)
        state["admin"] = {"Authorization": f"Bearer {token}"}
        jobs = {}
        for case, path in [p.values for p in applicable(API_PREFIX)]:
            collection = f"{API_PREFIX[path]}-{case.kind}"
            response = finishes(lambda: _submit(state, corpus, case, path, collection))
            assert response.status_code == 202, (case.kind, path, response.text)
            jobs[case.kind, path] = collection, response.json()["job"]["id"]
        store, gallery = state["services"].jobs, state["services"].gallery()
        for _, job_id in jobs.values():
            wait_until(lambda: store.get(job_id)["state"] not in ("queued", "running"), 120, f"job {job_id}", 0.02)
        state["results"] = {key: {"job": follow(state, job_id), "hits": list(gallery.scroll(where(collection))),
                                  "count": gallery.count(where(collection))}
                            for key, (collection, job_id) in jobs.items()}
        yield state


@pytest.mark.parametrize("case,path", applicable(API_PREFIX))
def test_api_outcome_and_count_of_each_kind(corpus, corpus_api, case, path):
    result = corpus_api["results"][case.kind, path]
    job, hits = result["job"], result["hits"]
    observed = sorted([(i["source"], i["reason"]) for i in job["items"]]
                      + [(h.payload["source"], INDEXED) for h in hits])
    assert observed == corpus.expected[path][case.kind]
    indexed = len(hits)
    assert (job["state"], job["done"], job["failed"], job["skipped"], result["count"]) == (
        "succeeded", indexed, 0, len(observed) - indexed, indexed)
    originals = corpus_api["services"].originals
    for hit in hits:  # kept in geoloc's own store, and served from it
        assert hit.payload["extra"]["original"] == originals.name(hit.payload["sha256"])
        assert originals.find(hit.payload["sha256"]) is not None


def test_api_refuses_a_manifest_it_cannot_read_naming_it(corpus_api, broken_manifests):
    api = corpus_api
    for kind, path in broken_manifests.items():
        client, admin = api["client"], api["admin"]
        assert client.post("/v1/collections", json={"name": f"broken-{kind}"}, headers=admin).status_code == 201
        response = finishes(lambda: client.post(f"/v1/collections/broken-{kind}/imports", json={"path": str(path)},
                                                headers=admin))
        error = expect_error(response, 422)
        assert error["code"] == "invalid_source" and error["message"].startswith(str(path)), kind
        assert BROKEN_MANIFESTS[kind][1] in error["message"], kind


def test_api_refuses_an_import_source_outside_the_roots(corpus_api, corpus, tmp_path_factory):
    api = corpus_api
    outside = tmp_path_factory.mktemp("elsewhere")
    (corpus.root / "door").symlink_to(outside, target_is_directory=True)
    client, admin = api["client"], api["admin"]
    assert client.post("/v1/collections", json={"name": "doors"}, headers=admin).status_code == 201
    for path in (outside, corpus.root / "door", corpus.root / ".." / ".." / outside.name):
        error = expect_error(client.post("/v1/collections/doors/imports", json={"path": str(path)}, headers=admin), 403)
        assert error["code"] == "forbidden" and "not under an import root" in error["message"]
    assert api["services"].gallery().count(where("doors")) == 0


def test_an_upload_refused_as_a_whole_adds_nothing(corpus_api, photos):
    """An empty file name, lat/lon not one per photo, too many photos, or a file name over the multipart
    parser's header limit: the request is refused."""
    api = corpus_api
    client, admin = api["client"], api["admin"]
    assert client.post("/v1/collections", json={"name": "refused"}, headers=admin).status_code == 201
    row = photos["spare"][0]

    def send(names, **form):
        return client.post("/v1/collections/refused/images", headers=admin, data=form or None,
                           files=[("photos", (name, row["bytes"], "image/jpeg")) for name in names])

    assert send([""]).status_code == 422
    assert expect_error(send(["a.jpg", "b.jpg"], lat=["1"], lon=["2"]), 422)["code"] == "invalid_request"
    assert expect_error(send([f"{i}.jpg" for i in range(MAX_BATCH + 1)]), 413)["code"] == "too_many_photos"
    assert expect_error(send(["y/" * 2100 + "y.jpg"]), 400)["message"] == "Invalid multipart data."
    assert api["services"].gallery().count(where("refused")) == 0


def test_a_photo_is_served_only_from_geolocs_own_copy(corpus_api, tmp_path_factory):
    """A payload naming a file on the server (as photos indexed before copies were kept did) gets nothing."""
    api = corpus_api
    secret = tmp_path_factory.mktemp("secret") / "secret.jpg"
    secret.write_bytes(b"\xff\xd8 a file the API must never serve")
    digest = sha256_hex(secret.read_bytes())
    services = api["services"]
    assert services.originals.find(digest) is None
    vector = np.full(services.embedder.dim, services.embedder.dim ** -0.5, dtype=np.float32)
    payload = make_payload("legacy", 41.0, 11.0, "secret.jpg", services.embedder.model_id, digest,
                           {"original": str(secret)})
    services.gallery().upsert([GalleryPoint(point_id("legacy", digest), vector, payload)])
    error = expect_error(api["client"].get(f"/v1/collections/legacy/images/{digest}/photo", headers=api["admin"]),
                         404)
    assert error["code"] == "no_original"


def test_locate_refuses_a_sliver_at_once(corpus_api):
    """1 x 40,000 pixels is few pixels, but the model's resize would make it 256 x 10 million."""
    sliver = Photos().photo(fmt="PNG", size=(1, 40000))
    response = finishes(lambda: corpus_api["client"].post("/v1/locate", files={"photo": ("s.png", sliver, "image/png")},
                                                          headers=corpus_api["admin"]))
    assert expect_error(response, 422)["code"] == "extreme_aspect_ratio"


@pytest.mark.parametrize("size,reason", [((1, 50), None), ((50, 1), None), ((1, 51), "extreme_aspect_ratio"),
                                         ((2, 101), "extreme_aspect_ratio"), ((1000, 20), None)])
def test_the_aspect_bound_is_fifty_to_one(size, reason):
    record = load_photo("p", Photos().photo(size=size, fmt="PNG"))
    assert getattr(record, "reason", None) == reason
