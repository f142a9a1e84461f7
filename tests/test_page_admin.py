"""The page's admin view in a real browser, with the network cut off: an admin key typed in the page lists the
collections with their counts; real dev photos uploaded through it fill a live progress bar fed by the job
API; a prune shows what it would remove (removing nothing) before it is confirmed; a delete asks first.

One `geoloc serve` for the module, over a small gallery of real dev photos, running jobs a photo per batch so
the progress bar has steps to show. Screenshots are kept under tests/artifacts/page/."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from geoloc.geodesy import haversine_km
from tests.page_helpers import ARTIFACTS, NO_CHROMIUM, TILE_PROBE, Served
from tests.services import DATA, manifest_rows

GALLERY_PHOTOS = 12
UPLOADS = 4

pytestmark = NO_CHROMIUM


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    rows = manifest_rows(40)
    served = Served(tmp_path_factory.mktemp("page-admin"), rows[:GALLERY_PHOTOS], "dev", GEOLOC_JOB_BATCH="1")
    token = served.run("keys", "create", "--admin", "--name", "page admin")
    client = httpx.Client(base_url=served.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    try:
        yield {"url": served.url, "token": token, "rows": rows[:GALLERY_PHOTOS], "spare": rows[-UPLOADS:],
               "api": client}
    finally:
        client.close()
        served.api.stop()


def counts(server) -> dict[str, int]:
    return {c["name"]: c["photos"] for c in server["api"].get("/v1/collections").json()["collections"]}


def open_admin(page, server) -> None:
    page.goto(server["url"] + "/")
    page.click("#tab-admin")
    assert page.is_visible("#admin") and not page.is_visible("#settings")
    assert "Type an admin key" in page.text_content("#admin-status")
    page.fill("#admin-key", server["token"])
    page.press("#admin-key", "Tab")
    page.wait_for_selector("#collection-rows tr[data-name=dev]")


def row_count(page, name: str) -> str:
    return page.text_content(f"#collection-rows tr[data-name='{name}'] .count")


def test_collections_are_listed_and_photos_uploaded_with_live_progress(server, offline):
    page, errors, aborted = offline
    open_admin(page, server)
    assert row_count(page, "dev") == str(GALLERY_PHOTOS)
    assert page.evaluate("sessionStorage.getItem('geoloc-admin-key')") == server["token"]
    assert page.evaluate("localStorage.getItem('geoloc-admin-key')") is None, "the admin key stays in the tab"

    page.fill("#create-name", "uploads")
    page.click("#create button[type=submit]")
    page.wait_for_selector("#collection-rows tr[data-name=uploads]")
    assert row_count(page, "uploads") == "0" and page.input_value("#upload-collection") == "uploads"
    page.set_input_files("#upload-photos", [DATA / "images" / r["filename"] for r in server["spare"]])
    page.evaluate("""() => {
        window.progressSeen = [];
        const bar = document.getElementById("job-progress");
        new MutationObserver(() => window.progressSeen.push(bar.value)).observe(bar, { attributes: true });
    }""")
    page.click("#upload button[type=submit]")
    page.wait_for_selector("#job[data-state=succeeded]", timeout=120_000)
    seen = page.evaluate("window.progressSeen")
    assert seen[-1] == 100 and seen == sorted(seen), seen
    assert page.get_attribute("#job-progress", "value") == "100"
    assert page.text_content("#job-status").startswith(f"{UPLOADS} of {UPLOADS} photos: {UPLOADS} indexed")
    page.wait_for_function("(n) => document.querySelector(\"tr[data-name=uploads] .count\").textContent === n",
                           arg=str(UPLOADS))
    assert counts(server)["uploads"] == UPLOADS
    page.screenshot(path=ARTIFACTS / "admin-upload.png")

    page.click("#collection-rows tr[data-name=uploads] button:has-text('Re-embed')")
    page.wait_for_function("() => document.getElementById('job-title').textContent.startsWith('Re-embedding')")
    page.wait_for_selector("#job[data-state=succeeded]", timeout=120_000)
    assert page.text_content("#job-status").startswith(f"{UPLOADS} of {UPLOADS} photos: {UPLOADS} re-embedded")
    assert counts(server)["uploads"] == UPLOADS
    assert not errors, errors
    assert aborted == [TILE_PROBE]


def test_a_prune_previews_what_it_would_remove_and_removes_only_when_confirmed(server, offline):
    page, errors, _ = offline
    open_admin(page, server)
    page.select_option("#prune-collection", "dev")
    page.mouse.click(900, 500)  # a click on the map sets the centre
    assert page.input_value("#prune-lat") and page.locator("path.centre-circle").count() == 1
    centre, km = server["rows"][0], 1500
    lat, lon = (np.array([float(r[c]) for r in server["rows"]]) for c in ("lat", "lon"))
    inside = int((haversine_km(lat, lon, float(centre["lat"]), float(centre["lon"])) <= km).sum())
    page.fill("#prune-lat", centre["lat"])
    page.fill("#prune-lon", centre["lon"])
    page.fill("#prune-km", str(km))
    before = counts(server)["dev"]
    with page.expect_response(lambda r: r.url.endswith("/prune")) as response:
        page.click("#prune button[type=submit]")
    assert response.value.status == 200 and response.value.request.post_data_json["dry_run"] is True
    page.wait_for_selector("#prune-preview:not([hidden])")
    assert page.text_content("#prune-summary").startswith(f"Would remove {inside} photo")
    assert page.locator("#prune-sample li").count() == inside
    assert page.locator(".leaflet-marker-icon.pin").count() == inside
    assert counts(server)["dev"] == before, "a preview removes nothing"
    page.screenshot(path=ARTIFACTS / "admin-prune-preview.png")

    page.click("#prune-confirm")
    page.wait_for_selector("#confirm[open]")
    assert f"Remove the {inside} photo" in page.text_content("#confirm-text")
    page.screenshot(path=ARTIFACTS / "admin-prune-confirm.png")
    page.click("#confirm-ok")
    page.wait_for_selector("#job[data-state=succeeded]", timeout=60_000)
    assert f"{inside} removed" in page.text_content("#job-status")
    assert counts(server)["dev"] == before - inside
    page.wait_for_function("(n) => document.querySelector(\"tr[data-name=dev] .count\").textContent === n",
                           arg=str(before - inside))
    assert not errors, errors


def test_a_collection_is_deleted_only_once_confirmed(server, offline):
    page, errors, _ = offline
    assert server["api"].post("/v1/collections", json={"name": "scratch"}).status_code == 201
    open_admin(page, server)
    page.click("#collection-rows tr[data-name=scratch] button.danger")
    page.wait_for_selector("#confirm[open]")
    assert "Delete collection “scratch” and its 0 photos?" in page.text_content("#confirm-text")
    page.screenshot(path=ARTIFACTS / "admin-delete-confirm.png")
    page.click("#confirm button[value=cancel]")
    assert not page.is_visible("#confirm") and "scratch" in counts(server)

    page.click("#collection-rows tr[data-name=scratch] button.danger")
    page.click("#confirm-ok")
    page.wait_for_selector("#collection-rows tr[data-name=scratch]", state="detached")
    assert "scratch" not in counts(server) and "dev" in counts(server)
    assert "Deleted “scratch”" in page.text_content("#admin-status")
    assert not errors, errors


def test_a_wrong_admin_key_is_said_so(server, offline):
    page, errors, _ = offline
    page.goto(server["url"] + "/")
    page.click("#tab-admin")
    page.fill("#admin-key", "gk_not-a-key")
    page.press("#admin-key", "Tab")
    page.wait_for_selector("#admin-status.error")
    assert "unknown API key. Type an admin key above." in page.text_content("#admin-status")
    assert page.locator("#collection-rows tr").count() == 0
    assert all("401" in e for e in errors), errors  # the browser logs the refused request itself
