"""Thumbnails: made as each photo is stored (upload, import, command line), served to keys that may read the
collection, made on first request for photos stored before thumbnails were, and gone with their collection."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from geoloc.ingest.originals import OriginalStore
from geoloc.ingest.records import point_id
from geoloc.ingest.sources import iter_source
from geoloc.ingest.thumbnails import SIZE, SUFFIX
from tests.api_helpers import expect_error, photo_file, serving
from tests.photos import write_photo


@pytest.fixture(scope="module")
def site(tmp_path_factory, photos, embedder):
    """An API of its own: this module deletes a collection."""
    with serving(tmp_path_factory.mktemp("thumb-home"), tmp_path_factory.mktemp("thumb-imports"), photos,
                 embedder) as state:
        yield state


def thumbnail_file(store: OriginalStore, digest: str):
    return store.directory / f"{store.name(digest)}.{SUFFIX}"


def url(collection: str, row: dict) -> str:
    return f"/v1/collections/{collection}/images/{point_id(collection, row['sha256'])}/thumbnail"


def test_uploading_a_photo_makes_its_thumbnail(site, photos):
    store = site["services"].originals
    for row in photos["news"] + photos["secret"]:
        assert thumbnail_file(store, row["sha256"]).is_file(), row["filename"]


def test_the_thumbnail_is_a_small_jpeg_cached_for_good(site, photos):
    client, row = site["client"], photos["news"][0]
    response = client.get(url("news", row), headers=site["reader"])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"
    assert len(response.content) < len(row["bytes"])
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "JPEG" and max(image.size) == SIZE
    original = Image.open(io.BytesIO(row["bytes"]))
    assert image.width / image.height == pytest.approx(original.width / original.height, rel=0.02)
    assert "immutable" in response.headers["cache-control"] and row["sha256"] in response.headers["etag"]
    again = client.get(url("news", row), headers={**site["reader"], "If-None-Match": response.headers["etag"]})
    assert again.status_code == 304 and not again.content
    by_digest = f"/v1/collections/news/images/{row['sha256']}/thumbnail"
    assert client.get(by_digest, headers=site["reader"]).content == response.content


def test_the_thumbnail_follows_the_rules_of_the_photo(site, photos):
    client, reader = site["client"], site["reader"]
    expect_error(client.get(url("news", photos["news"][0])), 401)
    expect_error(client.get(url("secret", photos["secret"][0]), headers=reader), 403)
    expect_error(client.get(url("news", photos["secret"][0]), headers=reader), 404)  # not a photo of news
    expect_error(client.get(url("news", photos["spare"][0]), headers=reader), 404)
    expect_error(client.get("/v1/collections/news/images/not-an-id/thumbnail", headers=reader), 422)


def test_a_photo_stored_before_thumbnails_gets_one_on_first_request(site, photos):
    store, row = site["services"].originals, photos["news"][1]
    path = thumbnail_file(store, row["sha256"])
    path.unlink()  # as a copy stored by an earlier geoloc
    response = site["client"].get(url("news", row), headers=site["reader"])
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert path.read_bytes() == response.content  # kept for the next request


def test_located_neighbours_carry_their_thumbnail(site, photos):
    client, reader = site["client"], site["reader"]
    for endpoint in ("/v1/locate", "/v1/similar"):
        answer = client.post(endpoint, files=photo_file(photos["news"][2]), data={"k": "3"}, headers=reader)
        neighbours = answer.json()["neighbours"]
        assert len(neighbours) == 3
        for n in neighbours:
            assert n["thumbnail"] == n["photo_url"].removesuffix("/photo") + "/thumbnail"
            served = client.get(n["thumbnail"], headers=reader)
            assert served.status_code == 200 and served.headers["content-type"] == "image/jpeg"


def test_deleting_the_collection_removes_its_thumbnails(site, photos):
    store = site["services"].originals
    paths = [thumbnail_file(store, row["sha256"]) for row in photos["secret"]]
    assert all(p.is_file() for p in paths)
    assert site["client"].delete("/v1/collections/secret", headers=site["admin"]).json() == {"deleted": 6}
    assert not any(p.exists() for p in paths)
    assert all(thumbnail_file(store, row["sha256"]).is_file() for row in photos["news"])


def test_a_folder_ingest_stores_an_upright_thumbnail_and_nothing_for_bytes_that_are_no_photo(tmp_path):
    store = OriginalStore(tmp_path / "store")
    image = Image.new("RGB", (600, 300), (200, 30, 30))
    exif = image.getexif()
    exif[0x0112] = 6  # shot sideways: shown rotated by 90 degrees
    (tmp_path / "src").mkdir()
    image.save(tmp_path / "src" / "sideways.jpg", exif=exif.tobytes())
    write_photo(tmp_path / "src" / "gps.jpg", 10, 20, size=(600, 300))
    records = {r.source: r for r in iter_source(tmp_path / "src", store=store) if hasattr(r, "sha256")}
    thumb = Image.open(store.thumbnail(records["gps.jpg"].sha256))
    assert thumb.size == (SIZE, SIZE // 2)
    assert "sideways.jpg" not in records  # no GPS: neither kept nor thumbnailed
    sideways, _ = store.put((tmp_path / "src" / "sideways.jpg").read_bytes())  # undecoded, as an upload is
    assert not thumbnail_file(store, sideways).exists()  # made from the bytes when first asked for
    assert Image.open(store.thumbnail(sideways)).size == (SIZE // 2, SIZE)
    garbage, _ = store.put(b"not a photo at all")
    assert store.thumbnail(garbage) is None and not thumbnail_file(store, garbage).exists()
    assert store.remove(sideways) > 0 and not thumbnail_file(store, sideways).exists()


def test_a_photo_over_the_pixel_bound_is_stored_without_decoding_it_for_a_thumbnail(tmp_path):
    store = OriginalStore(tmp_path / "store", max_pixels=100 * 100)
    buffer = io.BytesIO()
    Image.new("RGB", (101, 100)).save(buffer, "PNG")
    digest, path = store.put(buffer.getvalue())
    assert path.is_file() and not thumbnail_file(store, digest).exists() and store.thumbnail(digest) is None
