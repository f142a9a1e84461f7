"""The page at `/` and the API docs in a real browser, with the network cut off.

A real `geoloc serve` (uvicorn on a free loopback port) answers over a gallery of real dev photos indexed by
`geoloc index` with a model bundle, so answers carry candidate cells. Debian's Chromium, driven by
Playwright, may reach only loopback: every other request is aborted. A photo of a photographer the gallery
does not hold is dropped on the page; the map, the answer, the cells, the photo pins and their thumbnails
must appear with no console error. Screenshots are kept under tests/artifacts/page/ to be looked at.
"""

from __future__ import annotations

import base64
import csv
import io
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import s2sphere
from PIL import Image

from geoloc.cells import corners
from geoloc.models.partition import adaptive_hierarchy
from tests.bundles import cell_probabilities, constructed_bundle
from tests.services import DATA, REPO, geoloc, manifest_rows, service_env, start_api

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = REPO / "tests" / "artifacts" / "page"
TILE_PROBE = "https://tile.openstreetmap.org/0/0/0.png"
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
# the only outside loads allowed, each failing quietly: the browser still reports them as failed loads
EXPECTED_OUTSIDE = {TILE_PROBE: "the page's one try at the tile server",
                    REDOC_LOGO: "ReDoc's own 'API docs by Redocly' logo, hidden when it does not load"}
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
VERDICTS = {"Likely within 25 km", "Likely within 200 km", "Only the continent is likely", "Not confident"}
GALLERY_PHOTOS = 60
K = 8

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="Debian's chromium is not installed (scripts/test.sh installs it)")


def split() -> tuple[list[dict], list[dict]]:
    """Gallery and query rows, no photographer on both sides."""
    rows = manifest_rows(400)
    query_photographers = {rows[-1]["photographer"], rows[-2]["photographer"]}
    gallery = [r for r in rows if r["photographer"] not in query_photographers][:GALLERY_PHOTOS]
    return gallery, [r for r in rows if r["photographer"] in query_photographers]


@pytest.fixture(scope="module")
def server(tmp_path_factory, embedder):
    """`geoloc serve` over a gallery indexed with a bundle whose classifier prefers three fine cells;
    yields the base URL, a reader key for the gallery and the query rows."""
    gallery, queries = split()
    work = tmp_path_factory.mktemp("page")
    lat, lon = (np.array([float(r[c]) for r in gallery]) for c in ("lat", "lon"))
    hierarchy = adaptive_hierarchy(lat, lon, (4, 8, 16))
    probs = cell_probabilities(len(hierarchy.fine), {0: 0.45, 1: 0.2, 2: 0.1})
    bundle = constructed_bundle(work / "bundle", embedder.backbone, hierarchy, probs)
    manifest = work / "gallery.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "lat", "lon"])
        writer.writerows([str(DATA / "images" / r["filename"]), r["lat"], r["lon"]] for r in gallery)
    env = service_env(work / "home", "", GEOLOC_BUNDLE=bundle.path)

    def run(*args: str) -> str:
        done = subprocess.run(geoloc(*args), env=env, cwd=REPO, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    run("index", str(manifest), "--collection", "dev")
    token = run("keys", "create", "--reader", "--collections", "dev", "--name", "page")
    api, url = start_api(env, work)
    try:
        yield {"url": url, "token": token, "queries": queries}
    finally:
        api.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def offline(browser):
    """A page that reaches only loopback; `errors` gathers console errors and uncaught exceptions,
    `aborted` the URLs it tried to reach elsewhere."""
    context = browser.new_context(viewport={"width": 1360, "height": 1000}, device_scale_factor=1)
    aborted: list[str] = []

    def only_loopback(route):
        if urlsplit(route.request.url).hostname in LOOPBACK:
            route.continue_()
        else:
            aborted.append(route.request.url)
            route.abort()

    context.route("**/*", only_loopback)
    page = context.new_page()
    errors: list[str] = []

    def on_console(message):
        url = message.location.get("url", "")
        if message.type == "error" and not (url in EXPECTED_OUTSIDE and message.text.startswith("Failed to load")):
            errors.append(f"{message.text} ({url})")

    page.on("console", on_console)
    page.on("pageerror", lambda error: errors.append(str(error)))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield page, errors, aborted
    context.close()


def drop(page, path: Path) -> None:
    """Drop the photo on the drop zone as a person would drag it from their files."""
    page.evaluate("""([name, data]) => {
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, { type: "image/jpeg" }));
        const zone = document.getElementById("drop");
        for (const type of ["dragenter", "dragover", "drop"]) {
            zone.dispatchEvent(new DragEvent(type, { bubbles: true, cancelable: true, dataTransfer: transfer }));
        }
    }""", [path.name, base64.b64encode(path.read_bytes()).decode()])


def all_loaded(page, selector: str) -> bool:
    return page.evaluate("""(selector) => [...document.querySelectorAll(selector)]
        .every((img) => img.complete && img.naturalWidth > 0)""", selector)


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
    page.wait_for_function("""() => [...document.querySelectorAll('.pin-photo, .thumb')]
        .every((img) => img.complete && img.naturalWidth > 0)""", timeout=30_000)
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
