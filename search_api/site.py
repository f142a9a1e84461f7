"""What a browser gets besides the API: the page at `/` (locate, similar photos, admin), its map library and
basemap, and the API docs at `/docs` and `/redoc`. Every script, style and font comes from this install, so the
page and the docs work with no network; the page adds OpenStreetMap tiles only when the browser reaches them.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
import xstatic.pkg.leaflet
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from geoloc.search_api.basemap import countries_geojson

PAGE = Path(__file__).with_name("static")
LEAFLET = Path(xstatic.pkg.leaflet.BASE_DIR)
DOCS_ASSETS = Path(fastapi_offline.__file__).with_name("static")  # Swagger UI 5 and ReDoc, as shipped
CACHE_A_DAY = {"Cache-Control": "public, max-age=86400"}


def install(app: FastAPI) -> None:
    """Mount the page's files and add `/`, the basemap, `/docs` and `/redoc` (the app is built with
    docs_url=None and redoc_url=None, so FastAPI's CDN-backed pages never load)."""
    app.mount("/static", StaticFiles(directory=PAGE), name="static")
    app.mount("/vendor/leaflet", StaticFiles(directory=LEAFLET), name="leaflet")
    app.mount("/vendor/docs", StaticFiles(directory=DOCS_ASSETS), name="docs-assets")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(PAGE / "index.html")

    @app.get("/basemap/countries.geojson", include_in_schema=False)
    def countries() -> Response:
        return Response(countries_geojson(), media_type="application/geo+json", headers=CACHE_A_DAY)

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(openapi_url=root + app.openapi_url, title=f"{app.title}: API",
                                   swagger_js_url=f"{root}/vendor/docs/swagger-ui-bundle.js",
                                   swagger_css_url=f"{root}/vendor/docs/swagger-ui.css",
                                   swagger_favicon_url=f"{root}/vendor/docs/favicon.png",
                                   oauth2_redirect_url=None, swagger_ui_parameters={"validatorUrl": None})

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(openapi_url=root + app.openapi_url, title=f"{app.title}: API",
                              redoc_js_url=f"{root}/vendor/docs/redoc.standalone.js",
                              redoc_favicon_url=f"{root}/vendor/docs/favicon.png", with_google_fonts=False)
