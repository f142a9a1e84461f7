"""The FastAPI application: `create_app()` (what `geoloc serve` runs)."""

from __future__ import annotations

import asyncio
import gc
from contextlib import asynccontextmanager
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute

from geoloc import __version__
from geoloc.gallery.lending import lend_gallery
from geoloc.settings import Settings
from geoloc.search_api import audit_requests, errors, privacy, quotas, site
from geoloc.search_api.limits import BodyLimit, mib
from geoloc.search_api.routes import collections, explain, health, jobs, maintenance, query, thumbnails
from geoloc.search_api.services import Services, build_services

DESCRIPTION = """
Where was this photo taken? `POST /v1/locate` answers with a location, its evidence (the most similar
located reference photos) and, with a model bundle, candidate cells and a confidence.

**Keys.** Send `Authorization: Bearer gk_...`. Admin keys manage collections and follow jobs; reader keys
locate and search only the collections they are granted. Keys are created with `geoloc keys create`.

**Jobs.** Adding, pruning and re-embedding photos return a job at once; follow it at `GET /v1/jobs/{id}`.

**Errors** are JSON: `{"error": {"status": 422, "code": "invalid_request", "message": "..."}}`.
"""


def operation_id(route: APIRoute) -> str:
    """The route function's name in camelCase (`listCollections`): what generated clients call it."""
    first, *rest = route.name.split("_")
    return first + "".join(word.capitalize() for word in rest)


def create_app(settings: Settings | None = None, services: Services | None = None) -> FastAPI:
    """An app over `services` (tests pass their own), or over services built from `settings` at startup."""
    settings = services.settings if services else settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.services = services or build_services(settings)
        # uvicorn takes no request until this returns: the first locate is as fast as the next
        await asyncio.to_thread(app.state.services.start)
        if services is None:  # what a server loaded lives as long as it: full collections skip it (~0.3 s each)
            gc.collect()
            gc.freeze()
        # the embedded gallery this API holds, lent to the workers beside it (GEOLOC_GALLERY_VIA_API)
        lender = lend_gallery(settings, app.state.services.runtime.held_store)
        try:
            yield
        finally:
            if lender is not None:
                await asyncio.to_thread(lender.close)
            if services is None:
                app.state.services.close()
                gc.unfreeze()

    app = FastAPI(title="geoloc", version=__version__, description=DESCRIPTION, lifespan=lifespan,
                  generate_unique_id_function=operation_id,
                  docs_url=None, redoc_url=None)  # site serves both from this install, not from a CDN
    errors.install(app)
    request_limit = settings.max_photo_bytes * settings.max_batch_photos + (1 << 20)
    app.add_middleware(BodyLimit, max_bytes=request_limit,
                       hint=f"send at most {settings.max_batch_photos} photos of at most "
                            f"{mib(settings.max_photo_bytes)} each per request")
    audit_requests.install(app)  # outside the body limit: refusals are audited too
    privacy.install(app, settings)
    quotas.install(app, settings)
    for module in (query, explain, collections, thumbnails, jobs, maintenance):
        app.include_router(module.router, prefix="/v1")
    app.include_router(health.router)
    site.install(app)
    if settings.cors_origins:  # added last, so outermost: refusals by the other middleware carry its headers too
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["Authorization", "Content-Type"], expose_headers=["Location", "Retry-After"])
    return app
