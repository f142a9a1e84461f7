"""Hostile input end to end. A folder and a manifest inside an import root try to read outside it (absolute
names, `..`, symlinks to files and to /dev/zero), to block or exhaust the reader (a FIFO, a socket, folders
named like photos, a decompression bomb, a file over the byte limit) and to slip in positions a strict
reader refuses (EXIF degrees 0/0, an unknown reference letter, `1_0`, Arabic-Indic digits, nan).

Through `geoloc index` (its own process, with a timeout, so a hang fails the test; no import roots: the
command line reads the user's own disk) and through the import API (in-process, tests/api_helpers.py), each
with the exact gallery count afterwards; photos come back only from geoloc's own copies.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from geoloc.gallery.base import GalleryPoint, make_payload
from geoloc.gallery.edge import EdgeGallery
from geoloc.ingest.originals import OriginalStore
from geoloc.ingest.records import point_id, sha256_hex
from tests.api_helpers import MAX_PHOTO_BYTES, expect_error, follow, upload, where
from tests.hostile_files import build, finishes
from tests.services import REPO, geoloc

CLI_TIMEOUT_S = 300  # loads the model, then reads 24 entries: a blocked read shows as a timeout

FOLDER_CLI = {"indexed": {"a.jpg", "sub/b.jpg", "escape.jpg"},
              "skipped": {"not_a_regular_file": 4, "too_many_pixels": 1, "file_too_large": 1, "invalid_gps": 2}}
FOLDER_API = {"indexed": {"a.jpg", "sub/b.jpg"},
              "skipped": {"outside_import_root": 2, "not_a_regular_file": 3, "too_many_pixels": 1,
                          "file_too_large": 1, "invalid_gps": 2}}
MANIFEST_CLI = {"indexed": {"../photos/a.jpg", "c.jpg", "secret0.jpg", "LEAVING", "../photos/escape.jpg"},
                "skipped": {"not_a_regular_file": 3, "invalid_coordinates": 3, "too_many_pixels": 1,
                            "file_too_large": 1}}
MANIFEST_API = {"indexed": {"../photos/a.jpg", "c.jpg"},
                "skipped": {"outside_import_root": 4, "not_a_regular_file": 2, "invalid_coordinates": 3,
                            "too_many_pixels": 1, "file_too_large": 1}}


def expected_names(expected: dict, hostile) -> set[str]:
    return {hostile.leaving if name == "LEAVING" else name for name in expected["indexed"]}


def check_originals(hits: dict, store: OriginalStore, hostile) -> None:
    """Every indexed photo has its own copy in geoloc's store, and its name in the collection is relative."""
    for source, hit in hits.items():
        assert not Path(source).is_absolute()
        assert hit.payload["extra"]["original"] == store.name(hit.payload["sha256"])
        assert store.find(hit.payload["sha256"]).read_bytes() == hostile.originals[source]


# ------------------------------------------------------------------------------------------ command line

@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEOLOC_")}
    env.update(GEOLOC_HOME=str(base / "home"), GEOLOC_DEVICE="cpu", GEOLOC_BATCH_SIZE="8",
               GEOLOC_MAX_PHOTO_BYTES=str(MAX_PHOTO_BYTES), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return {"hostile": build(base / "root", base / "outside", MAX_PHOTO_BYTES), "home": base / "home", "env": env}


def run_cli(cli, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(geoloc(*args), env=cli["env"], cwd=REPO, capture_output=True, text=True,
                          timeout=CLI_TIMEOUT_S)


@pytest.mark.parametrize("source,collection,expected", [("folder", "hostile_folder", FOLDER_CLI),
                                                        ("manifest", "hostile_manifest", MANIFEST_CLI)])
def test_cli_index_reads_only_regular_files_never_blocks_and_keeps_copies(cli, source, collection, expected):
    hostile = cli["hostile"]
    done = run_cli(cli, "index", str(getattr(hostile, source)), "--collection", collection)
    assert done.returncode == 0, done.stderr[-3000:]
    names = expected_names(expected, hostile)
    assert f"indexed {len(names)} photos into '{collection}' ({len(names)} in the collection)" in done.stdout
    report = json.loads(Path(re.search(r"^report: (.+)$", done.stdout, re.M).group(1)).read_text())
    assert (report["indexed"], report["skipped"]) == (len(names), expected["skipped"])
    gallery = EdgeGallery(cli["home"] / "gallery")
    try:
        hits = {h.payload["source"]: h for h in gallery.scroll(where(collection))}
        assert gallery.collections()[collection] == len(names)
    finally:
        gallery.close()
    assert set(hits) == names
    check_originals(hits, OriginalStore(cli["home"] / "spool"), hostile)


def test_cli_refuses_a_manifest_that_is_not_utf8_or_not_a_file(cli):
    hostile = cli["hostile"]
    done = run_cli(cli, "index", str(hostile.latin1), "--collection", "latin1")
    assert done.returncode == 2
    assert done.stderr.strip() == (f"geoloc: error: {hostile.latin1}, line 3: not UTF-8 text (byte 4 of the line); "
                                   f"save the manifest as UTF-8")
    done = run_cli(cli, "index", str(hostile.fifo_manifest), "--collection", "fifo")
    assert done.returncode == 2 and str(hostile.fifo_manifest) in done.stderr
    assert "not_a_regular_file" in done.stderr


# ------------------------------------------------------------------------------------------------- API

@pytest.fixture(scope="module")
def hostile(api, tmp_path_factory):
    return build(api["imports"] / "hostile", tmp_path_factory.mktemp("outside"), MAX_PHOTO_BYTES)


def post_import(api, collection: str, path: Path):
    client, admin = api["client"], api["admin"]
    if client.post("/v1/collections", json={"name": collection}, headers=admin).status_code != 201:
        raise AssertionError(f"cannot create {collection}")
    return finishes(lambda: client.post(f"/v1/collections/{collection}/imports", json={"path": str(path)},
                                        headers=admin))


@pytest.mark.parametrize("source,collection,expected", [("folder", "hostile_folder", FOLDER_API),
                                                        ("manifest", "hostile_manifest", MANIFEST_API)])
def test_api_import_reads_only_inside_the_roots(api, hostile, source, collection, expected):
    response = post_import(api, collection, getattr(hostile, source))
    assert response.status_code == 202, response.text
    job = follow(api, response.json()["job"]["id"])
    names = expected_names(expected, hostile)
    assert (job["state"], job["done"], job["failed"], job["reasons"]) == ("succeeded", len(names), 0,
                                                                          expected["skipped"])
    gallery = api["services"].gallery()
    hits = {h.payload["source"]: h for h in gallery.scroll(where(collection))}
    assert set(hits) == names and gallery.count(where(collection)) == len(names)
    check_originals(hits, api["services"].originals, hostile)
    for source_name, hit in hits.items():
        photo = api["client"].get(f"/v1/collections/{collection}/images/{hit.id}/photo", headers=api["admin"])
        assert photo.status_code == 200 and photo.content == hostile.originals[source_name]


def test_api_refuses_a_manifest_that_is_not_utf8_or_not_a_file(api, hostile):
    error = expect_error(post_import(api, "latin1", hostile.latin1), 422)
    assert error["code"] == "invalid_source" and error["message"].startswith(f"{hostile.latin1}, line 3: not UTF-8")
    error = expect_error(post_import(api, "fifo", hostile.fifo_manifest), 422)
    assert str(hostile.fifo_manifest) in error["message"] and "not_a_regular_file" in error["message"]


def test_a_hostile_import_holds_up_no_later_job_and_form_coordinates_are_strict(api, hostile, photos):
    """The in-process runner runs one batch at a time: a blocked import would leave this upload queued."""
    assert post_import(api, "after_hostile", hostile.folder).status_code == 202
    row = photos["spare"][0]
    rows = [row, {**row, "bytes": row["bytes"] + b"\0", "lat": "1_0"},
            {**row, "bytes": row["bytes"] + b"\0\0", "lat": "\u0661\u0660"}]
    response = upload(api, "after_hostile", rows)
    assert [p["reason"] for p in response.json()["photos"]] == [None, "invalid_coordinates", "invalid_coordinates"]
    job = follow(api, response.json()["job"]["id"])
    assert (job["state"], job["done"], job["reasons"]) == ("succeeded", 1, {"invalid_coordinates": 2})
    assert api["services"].gallery().count(where("after_hostile")) == 2 + 1  # the folder's two, and this one


def test_a_photo_is_served_only_from_geolocs_own_copy(api, hostile):
    """A payload naming a file on the server (as photos indexed before copies were kept did) gets nothing."""
    data = hostile.originals["secret0.jpg"]
    digest = sha256_hex(data)
    services = api["services"]
    assert services.originals.find(digest) is None
    vector = np.full(services.embedder.dim, services.embedder.dim ** -0.5, dtype=np.float32)
    payload = make_payload("legacy", 41.0, 11.0, "secret0.jpg", services.embedder.model_id, digest,
                           {"original": str(hostile.outside / "secret0.jpg")})
    services.gallery().upsert([GalleryPoint(point_id("legacy", digest), vector, payload)])
    error = expect_error(api["client"].get(f"/v1/collections/legacy/images/{digest}/photo", headers=api["admin"]),
                         404)
    assert error["code"] == "no_original"
