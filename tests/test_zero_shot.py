"""The zero-shot cell prior, wired end to end with a tiny CLIP built here (random weights: these tests check the
wiring, not accuracy): real dev photos indexed with it, located through the CLI and the API with
Search-within-Cell over cells named by the gallery's places; an encoder without a text tower is refused."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from geoloc.cells import leaf_int64, leaf_range
from geoloc.cli import main
from geoloc.embedding import Embedder
from geoloc.models.encoders import build_encoder
from geoloc.places import nearest_places
from geoloc.search_api.app import create_app
from geoloc.search_api.services import build_services
from geoloc.settings import Settings
from geoloc.zero_shot import MAX_PLACES, TEMPLATES, ZeroShotPrior
from tests.api_helpers import follow, upload
from tests.test_encoders import DEV, save_tiny_clip

pytest.importorskip("open_clip")
pytestmark = pytest.mark.skipif(not (DEV / "manifest.csv").exists(), reason="the dev photos are not here")

GALLERY_PHOTOS, OTHER_PHOTOS = 48, 6


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny", seed=0)


@pytest.fixture(scope="module")
def split():
    """Gallery, a second collection and queries, no photographer on two sides (photographers in name order)."""
    with open(DEV / "manifest.csv", newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: (r["photographer"], r["filename"]))
    people: dict[str, list[dict]] = {}
    for row in rows:
        people.setdefault(row["photographer"], []).append(row)
    parts, taken = {"gallery": [], "other": [], "queries": []}, iter(people.values())
    for name, size in (("gallery", GALLERY_PHOTOS), ("other", OTHER_PHOTOS), ("queries", 3)):
        while len(parts[name]) < size:
            photos = next(taken)
            parts[name] += photos[:1] if name == "queries" else photos[:size - len(parts[name])]
    for row in parts["gallery"] + parts["other"] + parts["queries"]:
        row["bytes"] = (DEV / "images" / row["filename"]).read_bytes()
    return parts


def _manifest(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "lat", "lon", "photographer"])
        writer.writerows([DEV / "images" / r["filename"], r["lat"], r["lon"], r["photographer"]] for r in rows)
    return path


def _inside(lat: float, lon: float, tokens: list[str]) -> bool:
    leaf = leaf_int64(lat, lon)
    return any(lo <= leaf <= hi for lo, hi in map(leaf_range, tokens))


def _check_cells(answer: dict, top_cells: int) -> None:
    """Searched inside the likeliest cells: every neighbour lies in one of them; candidates are probabilities."""
    candidates = answer["candidates"]
    assert answer["method"] == "swc-cluster" and answer["cell"]["token"] == candidates[0]["token"]
    probabilities = [c["probability"] for c in candidates]
    assert all(p > 0 for p in probabilities) and sum(probabilities) <= 1 + 1e-9
    assert probabilities == sorted(probabilities, reverse=True)
    assert all(c["place"]["name"] for c in candidates)
    searched = [c["token"] for c in candidates[:top_cells]]
    assert answer["neighbours"] and all(_inside(n["lat"], n["lon"], searched) for n in answer["neighbours"])


def test_the_cli_locates_within_zero_shot_cells(tiny, split, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GEOLOC_HOME", str(tmp_path / "home"))
    model = ["--backbone", "clip", "--checkpoint", str(tiny)]
    assert main(["index", str(_manifest(tmp_path / "gallery.csv", split["gallery"])), "--collection", "dev",
                 *model]) == 0
    assert f"indexed {GALLERY_PHOTOS} photos" in capsys.readouterr().out
    queries = str(_manifest(tmp_path / "queries.csv", split["queries"]))

    assert main(["locate", queries, "--json", "-k", "3", "--prior", "zero-shot", *model]) == 0
    answers = json.loads(capsys.readouterr().out)["answers"]
    assert len(answers) == 3
    for answer in answers:
        _check_cells(answer, top_cells=1)
        assert _inside(answer["lat"], answer["lon"], [answer["cell"]["token"]])  # a mean of in-cell photos

    assert main(["locate", queries, "--prior", "zero-shot", "--top-cells", "2", *model]) == 0
    printed = capsys.readouterr().out
    assert printed.count("swc-cluster") == 3 and "; cell " in printed


@pytest.fixture(scope="module")
def clip_api(tiny, split, tmp_path_factory):
    """The API in-process with the tiny CLIP as its model: the gallery photos in `news`, others in `other`."""
    settings = Settings(home=tmp_path_factory.mktemp("home"), broker_url=None, qdrant_url=None, bundle=None,
                        require_keys=False, job_batch=16)
    services = build_services(settings, Embedder(build_encoder("clip", tiny, device="cpu", batch_size=16)))
    try:
        with TestClient(create_app(services=services)) as client:
            state = {"client": client, "admin": {}, "services": services}
            for name in ("news", "other"):
                assert client.post("/v1/collections", json={"name": name}).status_code == 201
                rows = split["gallery"] if name == "news" else split["other"]
                assert follow(state, upload(state, name, rows).json()["job"]["id"])["done"] == len(rows)
            yield state
    finally:
        services.close()


def _locate(client, row: dict, **form):
    return client.post("/v1/locate", files={"photo": (row["filename"], row["bytes"], "image/jpeg")}, data=form)


def test_the_api_locates_within_zero_shot_cells_of_the_searched_collections(clip_api, split):
    client, services = clip_api["client"], clip_api["services"]
    for row in split["queries"]:
        response = _locate(client, row, prior="zero-shot", top_cells="2", k="3", collections="news")
        assert response.status_code == 200, response.text
        answer = response.json()
        _check_cells(answer, top_cells=2)
        assert {n["collection"] for n in answer["neighbours"]} == {"news"}
        assert all(len(c["corners"]) == 4 for c in answer["candidates"])
    plain = _locate(client, split["queries"][0], k="3").json()  # default: no prior, plain retrieval
    assert plain["method"] == "retrieval-cluster" and plain["cell"] is None

    # the cells are made from the searched collections only, and cover each of their photos
    cells = ZeroShotPrior(services.embedder.backbone, services.gallery(), ["news"]).cells()
    assert cells.count == GALLERY_PHOTOS == cells.partition.counts.sum()
    everything = ZeroShotPrior(services.embedder.backbone, services.gallery()).cells()
    assert everything.count == GALLERY_PHOTOS + OTHER_PHOTOS


def test_cells_are_named_by_places_and_cached_per_gallery_state(clip_api, split):
    services = clip_api["services"]
    prior = ZeroShotPrior(services.embedder.backbone, services.gallery(), ["news"])
    cells = prior.cells()
    assert 2 <= len(cells.partition) <= int(np.ceil(GALLERY_PHOTOS / 10))
    centres = nearest_places(cells.partition.centres[:, 0], cells.partition.centres[:, 1])
    for places, prompts, centre in zip(cells.places, cells.prompts, centres):
        assert 1 <= len(places) <= MAX_PLACES and places[0].startswith(f"{centre.name}, ")
        assert centre.country in places[0]
        assert prompts == [t.format(where=where) for where in places for t in TEMPLATES]
    assert cells.embeddings.shape == (len(cells.partition), 32)
    np.testing.assert_allclose(np.linalg.norm(cells.embeddings, axis=1), 1.0, atol=1e-5)

    assert ZeroShotPrior(services.embedder.backbone, services.gallery(), ["news"]).cells() is cells  # cached
    job = upload(clip_api, "news", split["other"][:1]).json()["job"]["id"]
    assert follow(clip_api, job)["done"] == 1
    again = prior.cells()  # one more photo: cells made again, known prompts not embedded again
    assert again is not cells and again.count == GALLERY_PHOTOS + 1
    assert set(cells.vectors) & set(again.vectors)


def test_an_encoder_without_a_text_tower_is_refused(tmp_path, embedder, split):
    """EfficientNet-Lite0 has no text tower: asked for the zero-shot prior, the API says so."""
    settings = Settings(home=tmp_path / "home", broker_url=None, qdrant_url=None, bundle=None, require_keys=False)
    services = build_services(settings, embedder)
    try:
        with TestClient(create_app(services=services)) as client:
            response = _locate(client, split["queries"][0], prior="zero-shot")
            assert response.status_code == 409, response.text
            message = response.json()["error"]["message"]
            assert "text tower" in message and "CLIP" in message and embedder.model_id in message
            assert _locate(client, split["queries"][0], prior="nope").status_code == 422
    finally:
        services.close()
