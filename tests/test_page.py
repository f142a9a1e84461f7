"""The page at `/` and the API docs in a real browser, with the network cut off.

A real `geoloc serve` (uvicorn on a free loopback port) answers over a gallery of real dev photos indexed by
`geoloc index` with a model bundle, so answers carry candidate cells. Debian's Chromium, driven by
Playwright, may reach only loopback: every other request is aborted. A photo of a photographer the gallery
does not hold is dropped on the page; the map, the answer, the cells, the photo pins and their thumbnails
must appear with no console error. Screenshots are kept under tests/artifacts/page/ to be looked at.
"""

from __future__ import annotations

import io
from urllib.parse import urlsplit

import numpy as np
import pytest
import s2sphere
from PIL import Image

from geoloc.cells import corners
from geoloc.models.partition import adaptive_hierarchy
from tests.bundles import cell_probabilities, constructed_bundle
from tests.page_helpers import (ARTIFACTS, NO_CHROMIUM, REDOC_LOGO, TILE_PROBE, Served, all_loaded, drop,
                                wait_all_loaded)
from tests.services import DATA, manifest_rows

VERDICTS = {"Likely within 25 km", "Likely within 200 km", "Only the continent is likely", "Not confident"}
GALLERY_PHOTOS = 60

pytestmark = NO_CHROMIUM


def split() -> tuple[list[dict], list[dict]]:
    """Gallery and query rows, no photographer on both sides."""
    rows = manifest_rows(400)
    query_photographers = {rows[-1]["photographer"], rows[-2]["photographer"]}
    gallery = [r for r in rows if r["photographer"] not in query_photographers][:GALLERY_PHOTOS]
    return gallery, [r for r in rows if r["photographer"] in query_photographers]


@pytest.fixture(scope="module")
def server(tmp_path_factory, embedder):
    """`geoloc serve` over a gallery indexed with a bundle whose classifier prefers three fine cells;
    yields the base URL, a reader key for the gallery, the gallery and query rows and the server."""
    gallery, queries = split()
    work = tmp_path_factory.mktemp("page")
    lat, lon = (np.array([float(r[c]) for r in gallery]) for c in ("lat", "lon"))
    hierarchy = adaptive_hierarchy(lat, lon, (4, 8, 16))
    probs = cell_probabilities(len(hierarchy.fine), {0: 0.45, 1: 0.2, 2: 0.1})
    bundle = constructed_bundle(work / "bundle", embedder.backbone, hierarchy, probs)
    served = Served(work, gallery, "dev", GEOLOC_BUNDLE=bundle.path)
    token = served.run("keys", "create", "--reader", "--collections", "dev", "--name", "page")
    try:
        yield {"url": served.url, "token": token, "queries": queries, "gallery": gallery, "served": served,
               "hierarchy": hierarchy}
    finally:
        served.api.stop()


def locate_on_page(page, server, row) -> dict:
    page.goto(server["url"] + "/")
    page.fill("#key", server["token"])
    with page.expect_response(lambda r: r.url.endswith("/v1/locate"), timeout=120_000) as response:
        drop(page, DATA / "images" / row["filename"])
    assert response.value.status == 200, response.value.text()
    page.wait_for_selector("body[data-answered=true]", timeout=30_000)
    return response.value.json()


def test_a_dropped_photo_is_shown_on_the_map_offline(server, offline):
    page, errors, aborted = offline
    answer = locate_on_page(page, server, server["queries"][0])
    neighbours, candidates = answer["neighbours"], answer["candidates"]
    assert neighbours and candidates, answer
    page.wait_for_selector("path.answer-marker")
    assert page.locator(".leaflet-marker-icon.pin").count() == len(neighbours)
    assert page.locator("path.cell").count() == len(candidates)
    wait_all_loaded(page, ".pin-photo, .thumb")
    assert page.locator("#neighbours li").count() == len(neighbours)
    assert page.locator("#cells li").count() == len(candidates)
    # the basemap is the country outlines the server ships: more than a hundred shapes on the map
    assert page.locator(".leaflet-overlay-pane path").count() > 100
    assert page.locator(".leaflet-tile-pane img").count() == 0, "no tile can load offline"
    assert page.text_content("#verdict") in VERDICTS
    assert page.text_content("#place").strip()
    assert page.evaluate("localStorage.getItem('geoloc-key')") == server["token"]
    page.screenshot(path=ARTIFACTS / "locate.png")

    page.locator("#neighbours button").first.click()
    page.wait_for_function("""() => {
        const popup = document.querySelector(".leaflet-popup");
        return popup && getComputedStyle(popup).opacity === "1";
    }""")
    assert all_loaded(page, ".leaflet-popup .popup-photo")
    page.screenshot(path=ARTIFACTS / "neighbour-popup.png")
    assert not errors, errors
    assert aborted == [TILE_PROBE], "the page tries one tile, and reaches nothing else outside"


@pytest.mark.parametrize("cell", ["preferred", "other"])
def test_a_photo_the_archive_holds_is_named_as_such(server, offline, cell):
    """Held in the cell the classifier prefers, the photo is among the neighbours; held in another, the
    cells searched miss it, and it is looked up by its bytes' digest."""
    page, errors, _ = offline
    fine = server["hierarchy"].fine
    held = next(r for r in server["gallery"]
                if (fine.assign([float(r["lat"])], [float(r["lon"])])[0] == 0) == (cell == "preferred"))
    answer = locate_on_page(page, server, held)
    assert answer["same_photo"]["source"] == held["filename"], answer
    assert (answer["lat"], answer["lon"]) == pytest.approx((float(held["lat"]), float(held["lon"])))
    assert any(n["source"] == held["filename"] for n in answer["neighbours"]) == (cell == "preferred")
    assert page.text_content("#verdict") == "This very photo is in the archive"
    assert page.text_content("#facts").startswith(f"dev: {held['filename']} · ")
    assert not errors, errors


def test_the_answer_carries_each_cells_corners(server, offline):
    page, errors, _ = offline
    answer = locate_on_page(page, server, server["queries"][-1])
    for cell in [answer["cell"], *answer["candidates"]]:
        cell_id = s2sphere.CellId.from_token(cell["token"])
        assert cell["corners"] == corners(cell["token"]) and len(cell["corners"]) == 4
        # a point a little way from each corner towards the centre lies in the cell, and away from it, not
        centre = s2sphere.Cell(cell_id).get_center()
        for lat, lon in cell["corners"]:
            corner = s2sphere.LatLng.from_degrees(lat, lon).to_point()
            for step, inside in ((0.01, True), (-0.01, False)):
                point = (corner * (1 - step) + centre * step).normalize()
                assert (s2sphere.CellId.from_point(point).parent(cell_id.level()) == cell_id) == inside
    page.locator("#cells button").first.click()  # the likeliest cell then fills the map
    filled = page.evaluate("""() => {
        const cell = document.querySelector("path.cell").getBoundingClientRect();
        const map = document.getElementById("map").getBoundingClientRect();
        return Math.max(cell.width / map.width, cell.height / map.height);
    }""")
    assert 0.6 < filled < 1.01, filled
    page.screenshot(path=ARTIFACTS / "likeliest-cell.png")
    assert not errors, errors


def test_tiles_are_added_when_the_tile_server_answers(server, offline):
    """Stands in for the tile server with one plain tile, here: the page must then lay tiles under the map."""
    page, errors, aborted = offline
    tile = io.BytesIO()
    Image.new("RGB", (256, 256), (170, 211, 223)).save(tile, "PNG")
    page.context.route("https://tile.openstreetmap.org/**",
                       lambda route: route.fulfill(body=tile.getvalue(), content_type="image/png"))
    page.goto(server["url"] + "/")
    page.wait_for_selector(".leaflet-tile-pane img.leaflet-tile-loaded")
    assert "online" in page.get_attribute("#map", "class")
    assert not errors and not aborted, (errors, aborted)


@pytest.mark.parametrize("path, ready, outside", [("/docs", ".swagger-ui .opblock-summary-path", []),
                                                  ("/redoc", ".api-content h2", [REDOC_LOGO])])
def test_api_docs_render_offline(server, offline, path, ready, outside):
    page, errors, aborted = offline
    page.goto(server["url"] + path)
    page.wait_for_selector(ready, timeout=30_000)
    assert "/v1/locate" in page.text_content("body")
    page.screenshot(path=ARTIFACTS / f"{path.strip('/')}.png")
    assert not errors, errors
    assert aborted == outside, f"{path} reached out of this server: {aborted}"


def test_similar_photos_near_a_centre_are_listed_and_pinned_offline(server, offline):
    page, errors, aborted = offline
    page.goto(server["url"] + "/")
    page.fill("#key", server["token"])
    page.click("#tab-similar")
    assert page.is_visible("#similar") and not page.is_visible("#locate")
    page.mouse.click(900, 500)  # a click on the map sets the centre
    assert page.input_value("#similar-lat") and page.input_value("#similar-lon")
    assert page.locator("path.centre-circle").count() == 1
    centre = server["gallery"][0]
    page.fill("#similar-lat", centre["lat"])
    page.fill("#similar-lon", centre["lon"])
    page.fill("#similar-km", "3000")
    fetched: list[str] = []
    page.on("request", lambda request: fetched.append(request.url))
    with page.expect_response(lambda r: r.url.endswith("/v1/similar"), timeout=120_000) as response:
        drop(page, DATA / "images" / server["queries"][0]["filename"], zone="similar-drop")
    assert response.value.status == 200, response.value.text()
    asked = response.value.request.post_data_buffer
    assert b'name="radius_km"\r\n\r\n3000' in asked and f'name="lat"\r\n\r\n{float(centre["lat"])}'.encode() in asked
    found = response.value.json()["neighbours"]
    assert found and all(n["km"] <= 3000 for n in found), found
    page.wait_for_selector("body[data-similar=true]")
    assert page.locator("#similar-results li").count() == len(found)
    assert page.locator(".leaflet-marker-icon.pin").count() == len(found)
    wait_all_loaded(page, "#similar .thumb, .pin-photo")
    # each photo is shown from its thumbnail where the server offers one, else from the photo itself
    fetched_paths = {urlsplit(url).path for url in fetched}
    assert {n.get("thumbnail") or n["photo_url"] for n in found} <= fetched_paths, fetched
    if all(n.get("thumbnail") for n in found):
        assert not {n["photo_url"] for n in found} & fetched_paths, "thumbnails are shown, never the originals"
    words = page.text_content("#similar-results li")
    assert "similarity" in words and "km from the centre" in words
    assert page.text_content("#similar-title").startswith(f"{len(found)} similar photos within 3,000 km")
    page.screenshot(path=ARTIFACTS / "similar.png")
    page.locator("#similar-results button").first.click()
    page.wait_for_selector(".leaflet-popup .popup-photo")
    assert not errors, errors
    assert aborted == [TILE_PROBE]


def test_explain_lays_a_heat_map_over_the_photo(server, offline):
    if not server["served"].has_route("/v1/explain"):
        pytest.skip("this build serves no POST /v1/explain yet (search_api/routes/explain.py): the page asks it "
                    "and says so when it is missing")
    page, errors, _ = offline
    locate_on_page(page, server, server["queries"][0])
    with page.expect_response(lambda r: r.url.endswith("/v1/explain"), timeout=120_000) as response:
        page.click("#explain")
    assert response.value.status == 200, response.value.text()
    grid = response.value.json()
    assert len(grid["importance"]) == grid["rows"] and all(len(row) == grid["cols"] for row in grid["importance"])
    page.wait_for_selector("body[data-explained=true]")
    assert page.is_visible("#heat") and page.is_visible("#heat-legend")
    assert "regions that drive the answer" in page.text_content("#heat-legend")
    overlay = page.evaluate("""([rows, cols]) => {
        const canvas = document.getElementById("heat");
        const heat = canvas.getBoundingClientRect();
        const photo = document.getElementById("preview").getBoundingClientRect();
        const context = canvas.getContext("2d");
        const centres = [];  // the alpha at the middle of each grid cell, row by row
        for (let r = 0; r < rows; r++) centres.push([...Array(cols).keys()].map((c) => context.getImageData(
            Math.floor((c + 0.5) * canvas.width / cols), Math.floor((r + 0.5) * canvas.height / rows), 1, 1).data[3]));
        return { centres, offset: [heat.left - photo.left, heat.top - photo.top, heat.width - photo.width,
                                   heat.height - photo.height] };
    }""", [grid["rows"], grid["cols"]])
    assert all(abs(d) < 1.5 for d in overlay["offset"]), overlay  # the heat map lies exactly over the photo
    expected = 255 * (0.12 + 0.6 * np.array(grid["importance"]))  # faint where nothing matters, strong where much
    assert np.abs(np.array(overlay["centres"]) - expected).max() < 40, (overlay["centres"], grid["importance"])
    page.locator("#drop").screenshot(path=ARTIFACTS / "explain.png")
    page.screenshot(path=ARTIFACTS / "locate-explained.png")
    page.click("#explain")
    assert not page.is_visible("#heat")
    assert not errors, errors
