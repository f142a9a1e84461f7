"""What the browser tests of the page share (registered as a plugin in conftest): Debian's Chromium driven by
Playwright with every non-loopback request cut off, console errors gathered, a photo dropped as a person
would drag it, and a real `geoloc serve` over a gallery indexed from real dev photos."""

from __future__ import annotations

import base64
import csv
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.services import DATA, REPO, geoloc, service_env, start_api

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
NO_CHROMIUM = pytest.mark.skipif(not CHROMIUM.exists(),
                                 reason="Debian's chromium is not installed (scripts/test.sh installs it)")


class Served:
    """`geoloc serve` over a gallery of `rows` indexed into `collection` by `geoloc index`; `run` runs
    any other geoloc command against the same data home."""

    def __init__(self, work: Path, rows: list[dict], collection: str, **env):
        self.env = service_env(work / "home", "", **env)
        manifest = work / f"{collection}.csv"
        with manifest.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["filename", "lat", "lon"])
            writer.writerows([str(DATA / "images" / r["filename"]), r["lat"], r["lon"]] for r in rows)
        self.run("index", str(manifest), "--collection", collection)
        self.api, self.url = start_api(self.env, work)

    def run(self, *args: str) -> str:
        done = subprocess.run(geoloc(*args), env=self.env, cwd=REPO, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def has_route(self, path: str) -> bool:
        return path in httpx.get(f"{self.url}/openapi.json", timeout=10).json()["paths"]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (scripts/test.sh installs it)")
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


def drop(page, path: Path, zone: str = "drop") -> None:
    """Drop the photo on a drop zone as a person would drag it from their files."""
    page.evaluate("""([name, data, zone]) => {
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, { type: "image/jpeg" }));
        const target = document.getElementById(zone);
        for (const type of ["dragenter", "dragover", "drop"]) {
            target.dispatchEvent(new DragEvent(type, { bubbles: true, cancelable: true, dataTransfer: transfer }));
        }
    }""", [path.name, base64.b64encode(path.read_bytes()).decode(), zone])


def all_loaded(page, selector: str) -> bool:
    return page.evaluate("""(selector) => [...document.querySelectorAll(selector)]
        .every((img) => img.complete && img.naturalWidth > 0)""", selector)


def wait_all_loaded(page, selector: str) -> None:
    page.wait_for_function("""(selector) => [...document.querySelectorAll(selector)]
        .every((img) => img.complete && img.naturalWidth > 0)""", arg=selector, timeout=30_000)
