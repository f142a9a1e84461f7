"""Occlusion sensitivity (geoloc.explain, POST /v1/explain, `geoloc explain`) with the real backbone over a real
gallery of dev photos: the map is a grid in [0, 1], its answer is locate's, and it is real: covering the parts
it ranks highest lowers the score more than covering those it ranks lowest, and a part that carries nothing
(already a flat patch) gets no importance."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from geoloc.cli import main
from geoloc.explain import cell_boxes, covered, explain, fill_colour, normalised, rested_on
from geoloc.ingest.records import point_id
from geoloc.locate import Locator
from tests.api_helpers import expect_error, photo_file
from tests.services import DATA


def image_of(row) -> Image.Image:
    return Image.open(io.BytesIO(row["bytes"])).convert("RGB")


@pytest.fixture(scope="module")
def locator(api):
    embedder, gallery = api["services"].serving()
    return Locator(embedder, gallery, collections=["news"])


def retrieval_score(locator, answer, images) -> np.ndarray:
    """The score explained, computed here on its own: mean cosine similarity to the photos the answer rests on."""
    references = np.stack([h.vector for h in locator.gallery.retrieve([n.id for n in rested_on(answer)])])
    references /= np.linalg.norm(references, axis=1, keepdims=True)
    return (locator.embedder.vectors(locator.embedder.features(images)) @ references.T).mean(axis=1)


def test_cells_tile_the_photo_and_importances_are_scaled_drops():
    boxes = cell_boxes((10, 7), 3, 4)
    assert len(boxes) == 12 and boxes[0] == (0, 0, 2, 2) and boxes[-1] == (8, 5, 10, 7)
    cover = np.zeros((7, 10), int)
    for left, top, right, bottom in boxes:
        cover[top:bottom, left:right] += 1
    assert (cover == 1).all()
    image = Image.new("RGB", (10, 7), (255, 255, 255))
    pixels = np.asarray(covered(image, boxes[5], (1, 2, 3)))
    assert (pixels[2:5, 2:5] == (1, 2, 3)).all() and (pixels.sum(axis=2) == 3 * 255).sum() == 70 - 9
    assert np.array_equal(normalised(np.array([[0.2, -0.1], [0.1, 0.0]])), [[1.0, 0.0], [0.5, 0.0]])
    assert not normalised(np.array([[-0.2, 0.0]])).any()
    assert not normalised(np.array([[3e-7, -1e-3]])).any()  # rounding noise is no heat
    assert covered(Image.new("RGB", (2, 2)), (1, 1, 1, 2), (9, 9, 9)).getpixel((1, 1)) == (0, 0, 0)  # empty cell


def test_covering_what_the_map_ranks_highest_lowers_the_score_more(locator, photos):
    image = image_of(photos["spare"][0])  # a photo the gallery does not hold
    explanation = explain(image, locator, grid=4)
    assert explanation.target == "retrieval" and explanation.importance.shape == (4, 4)
    assert explanation.importance.max() == 1.0 and explanation.importance.min() >= 0.0
    order = np.argsort(explanation.drops, axis=None)
    boxes, fill = cell_boxes(image.size, 4, 4), fill_colour(locator)

    def cover_all(cells):
        copy = image
        for cell in cells:
            copy = covered(copy, boxes[cell], fill)
        return copy

    most, least, whole = retrieval_score(locator, explanation.answer,
                                         [cover_all(order[-4:]), cover_all(order[:4]), image])
    assert whole == pytest.approx(explanation.score, abs=1e-4)
    assert most < least - 0.01, (most, least, whole)


def test_a_part_that_carries_nothing_gets_no_importance(locator, photos):
    """The right half is already a flat patch of the covering colour: covering any of it changes nothing."""
    photo = image_of(photos["spare"][1]).resize((256, 256))
    image = Image.new("RGB", (512, 256), fill_colour(locator))
    image.paste(photo, (0, 0))
    explanation = explain(image, locator, grid=4)
    assert explanation.importance[:, :2].max() == 1.0
    assert explanation.importance[:, 2:].max() < 0.02, explanation.importance


def test_the_api_explains_locates_answer_for_the_readers_collections(api, photos):
    client, query = api["client"], photos["spare"][2]
    response = client.post("/v1/explain", files=photo_file(query), data={"grid": "5"}, headers=api["reader"])
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["rows"], body["cols"], body["target"]) == (5, 5, "retrieval")
    values = np.array(body["importance"])
    assert values.shape == (5, 5) and values.min() >= 0 and values.max() == 1
    located = client.post("/v1/locate", files=photo_file(query), headers=api["reader"]).json()
    assert body["answer"] == pytest.approx({"lat": located["lat"], "lon": located["lon"]})
    default = client.post("/v1/explain", files=photo_file(query), headers=api["reader"]).json()
    assert (default["rows"], default["cols"]) == (7, 7)


def test_a_held_photo_is_explained_as_locate_answers_it(api, photos):
    """A photo the gallery holds: locate answers with its copy, and explain explains that answer, by the
    similarity to the copy."""
    client, query = api["client"], photos["news"][1]
    located = client.post("/v1/locate", files=photo_file(query), headers=api["reader"]).json()
    assert located["same_photo"]["id"] == point_id("news", query["sha256"])
    body = client.post("/v1/explain", files=photo_file(query), data={"grid": "3"}, headers=api["reader"]).json()
    assert body["target"] == "retrieval"
    assert body["answer"] == pytest.approx({"lat": located["lat"], "lon": located["lon"]})


def test_what_an_answer_rests_on_is_what_its_aggregator_chose(locator, photos):
    image = image_of(photos["spare"][1])
    for aggregator in ("cluster", "witnesses"):
        answer = Locator(locator.embedder, locator.gallery, collections=["news"], aggregator=aggregator,
                         k=5).locate([image])[0]
        assert len(rested_on(answer)) == answer.cluster_size >= 1
        assert all(n in answer.neighbours for n in rested_on(answer))


def test_the_api_refuses_what_locate_refuses(api, photos):
    client, reader = api["client"], api["reader"]
    broken = {"photo": ("broken.jpg", b"\xff\xd8\xff\xe0 not a photo", "image/jpeg")}
    refused = expect_error(client.post("/v1/explain", files=broken, headers=reader), 422)
    assert refused == expect_error(client.post("/v1/locate", files=broken, headers=reader), 422)
    for grid in ("2", "17", "seven"):
        expect_error(client.post("/v1/explain", files=photo_file(photos["news"][0]), data={"grid": grid},
                                 headers=reader), 422)
    expect_error(client.post("/v1/explain", files=photo_file(photos["news"][0])), 401)
    expect_error(client.post("/v1/explain", headers=reader), 422)


def test_with_a_bundle_the_predicted_cell_is_explained(swc_api, photos):
    """The constructed bundle's classifier gives every photo the same probabilities: nothing covered matters."""
    response = swc_api["client"].post("/v1/explain", files=photo_file(photos["spare"][0]), data={"grid": "3"},
                                      headers=swc_api["reader"])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["target"] == "cell" and body["importance"] == [[0.0] * 3] * 3


def test_the_command_prints_the_grid_and_writes_a_heat_map(tmp_path, monkeypatch, capsys, photos):
    monkeypatch.setenv("GEOLOC_HOME", str(tmp_path / "home"))
    manifest = tmp_path / "gallery.csv"
    manifest.write_text("filename,lat,lon\n" + "".join(f"{DATA / 'images' / r['filename']},{r['lat']},{r['lon']}\n"
                                                      for r in photos["news"]))
    assert main(["index", str(manifest), "--collection", "news", "--json"]) == 0
    capsys.readouterr()
    query = DATA / "images" / photos["spare"][0]["filename"]
    heat = tmp_path / "heat.png"
    assert main(["explain", str(query), "--grid", "3", "--json", "--out", str(heat)]) == 0
    document = json.loads(capsys.readouterr().out)
    assert (document["rows"], document["cols"], document["target"], document["out"]) == (3, 3, "retrieval", str(heat))
    assert max(map(max, document["importance"])) == 1.0
    assert Image.open(heat).size == Image.open(query).size
    assert main(["explain", str(query), "--grid", "3"]) == 0
    out = capsys.readouterr().out
    assert "answer" in out and len([line for line in out.splitlines() if line.startswith("  ")]) == 3
    (tmp_path / "broken.jpg").write_bytes(b"not a photo")
    assert main(["explain", str(tmp_path / "broken.jpg")]) == 2
    assert "cannot use this photo (undecodable_image)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["explain", str(query), "--grid", "20"])
