"""End to end on real geotagged photos (a slice of im2gps3k-dev), through the `geoloc` command."""

import csv
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import s2sphere

from geoloc.gallery.edge import EdgeGallery
from geoloc.evaluation import errors_km
from geoloc.geodesy import haversine_km, spherical_mean
from geoloc.models.bundle import load_bundle

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT.parent / "shared/data/im2gps3k-dev/manifest.csv"
SLICE = 600

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not MANIFEST.exists(), reason=f"real photos not found at {MANIFEST}")]


def densest_location(lat, lon, radius_km: float = 25.0) -> tuple[float, float]:
    """The trivial answer: the centre of the city-sized spot holding the most gallery photos."""
    lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
    near = haversine_km(lat[:, None], lon[:, None], lat[None, :], lon[None, :]) <= radius_km
    members = near[int(np.argmax(near.sum(axis=1)))]
    return spherical_mean(lat[members], lon[members])


def geoloc(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, GEOLOC_HOME=str(home))
    return subprocess.run([str(ROOT / ".venv/bin/geoloc"), *args], env=env, capture_output=True, text=True)


def read(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    """gallery.csv and queries.csv of a slice, split by photographer by the `geoloc split` command."""
    work = tmp_path_factory.mktemp("split")
    rows = read(MANIFEST)[:SLICE]
    manifest = work / "slice.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "filename": str(MANIFEST.parent / "images" / r["filename"])} for r in rows)
    assert geoloc(work, "split", str(manifest), "--out", str(work), "--query-fraction", "0.2").returncode == 0
    return work


@pytest.fixture(scope="module")
def indexed(split, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    (home / "split").symlink_to(split)
    result = geoloc(home, "index", str(home / "split/gallery.csv"), "--collection", "real")
    assert result.returncode == 0, result.stderr
    return home


@pytest.fixture(scope="module")
def swc(split, tmp_path_factory):
    """A bundle trained on the gallery part's cached features, and a gallery indexed with it."""
    home = tmp_path_factory.mktemp("swc")
    features, bundle = home / "gallery.npz", home / "bundle"
    for args in (["features", str(split / "gallery.csv"), "--out", str(features)],
                 ["train", str(features), "--out", str(bundle)],
                 ["index", str(split / "gallery.csv"), "--collection", "swc", "--bundle", str(bundle)]):
        result = geoloc(home, *args)
        assert result.returncode == 0, (args, result.stderr)
    return home, bundle


def test_split_is_photographer_disjoint(indexed):
    gallery = {r["photographer"] for r in read(indexed / "split/gallery.csv")}
    queries = {r["photographer"] for r in read(indexed / "split/queries.csv")}
    assert gallery and queries and not gallery & queries


def test_every_gallery_photo_is_indexed_once_and_reported(indexed):
    n_gallery = len(read(indexed / "split/gallery.csv"))
    listing = geoloc(indexed, "collections")
    assert listing.stdout.split() == ["real", str(n_gallery)]
    report = json.loads(next((indexed / "reports").glob("index-real-*.json")).read_text())
    assert report["indexed"] == n_gallery and report["skipped"] == {}


def test_retrieval_beats_the_trivial_answers_at_continent_scale(indexed):
    gallery = read(indexed / "split/gallery.csv")
    result = geoloc(indexed, "locate", str(indexed / "split/queries.csv"), "--json")
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout)["answers"]
    queries = {Path(r["filename"]).name: r for r in read(indexed / "split/queries.csv")}  # named as indexed
    assert len(answers) == len(queries)
    true = np.array([[float(queries[a["image"]]["lat"]), float(queries[a["image"]]["lon"])] for a in answers])
    errors = np.array([a["error_km"] for a in answers])
    assert np.allclose(errors, errors_km([a["lat"] for a in answers], [a["lon"] for a in answers],
                                         true[:, 0], true[:, 1]))
    g = np.array([[float(r["lat"]), float(r["lon"])] for r in gallery])
    dense_lat, dense_lon = densest_location(g[:, 0], g[:, 1])
    densest = np.mean(haversine_km(true[:, 0], true[:, 1], dense_lat, dense_lon) <= 2500)
    # a gallery photo drawn at random: what retrieval would score if the embedding carried no location
    random_photo = np.mean(haversine_km(true[:, None, 0], true[:, None, 1], g[None, :, 0], g[None, :, 1]) <= 2500)
    retrieval = np.mean(errors <= 2500)
    assert retrieval > densest and retrieval > random_photo, (retrieval, densest, random_photo)


def test_swc_answers_from_inside_the_predicted_cell(swc, split):
    home, bundle = swc
    result = geoloc(home, "locate", str(split / "queries.csv"), "--bundle", str(bundle), "--json")
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout)["answers"]
    assert answers
    for answer in answers:
        assert answer["method"] == "swc-cluster" and 0 <= answer["confidence"] <= 1
        assert len(answer["candidates"]) == min(5, len(answer["candidates"])) and answer["candidates"]
        assert answer["candidates"][0]["token"] == answer["cell"]["token"]
        cell = s2sphere.CellId.from_token(answer["cell"]["token"])
        for n in answer["neighbours"]:
            assert cell.contains(s2sphere.CellId.from_lat_lng(s2sphere.LatLng.from_degrees(n["lat"], n["lon"])))
        if not answer["neighbours"]:  # an empty cell answers its centre
            assert (answer["lat"], answer["lon"]) == (answer["cell"]["lat"], answer["cell"]["lon"])


def test_a_gallery_indexed_with_a_bundle_records_it(swc, split):
    home, bundle = swc
    loaded = load_bundle(bundle)
    with EdgeGallery(home / "gallery") as gallery:
        payloads = [hit.payload for hit in gallery.scroll()]
    assert len(payloads) == len(read(split / "gallery.csv"))
    assert all(p["bundle"] == loaded.bundle_id and p["model"] == loaded.model_id for p in payloads)


def test_another_models_query_never_reads_this_models_store(swc, indexed, split):
    """The gallery holds backbone vectors; a bundle's query goes to the bundle's own (empty) store."""
    _, bundle = swc
    result = geoloc(indexed, "locate", str(split / "queries.csv"), "--bundle", str(bundle))
    assert result.returncode == 2 and "holds no photos yet" in result.stderr, result.stderr


def test_prune_unplaceable_removes_what_the_classifier_misplaces(swc):
    home, bundle = swc
    before = int(geoloc(home, "collections").stdout.split()[1])
    result = geoloc(home, "prune", "--collection", "swc", "--unplaceable", "--bundle", str(bundle))
    assert result.returncode == 0, result.stderr
    removed = int(result.stdout.split("removed ")[1].split()[0])
    assert f"of {before} photos checked" in result.stdout
    after = geoloc(home, "collections").stdout.split()
    assert int(after[1] if after[0] == "swc" else 0) == before - removed


# last: these change the retrieval gallery the tests above read
def test_reindexing_never_duplicates_and_drop_empties(indexed):
    subset = indexed / "again.csv"
    rows = read(indexed / "split/gallery.csv")[:10]
    with subset.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    before = geoloc(indexed, "collections").stdout
    assert geoloc(indexed, "index", str(subset), "--collection", "real").returncode == 0
    assert geoloc(indexed, "collections").stdout == before
    dropped = geoloc(indexed, "drop", "real", "--yes")
    assert dropped.returncode == 0 and "removed" in dropped.stdout
    assert "empty" in geoloc(indexed, "collections").stdout


def test_user_errors_are_one_line_without_traceback(indexed, tmp_path):
    for args in (["index", str(tmp_path / "nowhere"), "--collection", "x"],
                 ["locate", str(tmp_path / "missing.jpg")],
                 ["drop", "no-such-collection"],
                 ["index", str(indexed / "split/gallery.csv"), "--collection", "bad name!"]):
        result = geoloc(indexed, *args)
        assert result.returncode != 0, args
        assert "Traceback" not in result.stderr and result.stderr.startswith("geoloc: error:"), result.stderr
