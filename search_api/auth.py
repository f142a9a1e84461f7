"""Who is calling: the API key from `Authorization: Bearer ...`, checked and charged against its quotas, as
FastAPI dependencies. An admin route that names a collection (`{name}` in its path, or a new collection's
name) needs an admin key that manages that collection."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from geoloc.keys import ADMIN, EXPIRED, REVOKED, ApiKey
from geoloc.search_api.audit_requests import note
from geoloc.search_api.errors import ApiError
from geoloc.search_api.schemas import NewCollection
from geoloc.search_api.services import Services

bearer = HTTPBearer(auto_error=False, description="An API key from `geoloc keys create`: gk_...")

# every caller, when keys are switched off for a trusted loopback (GEOLOC_REQUIRE_KEYS=0)
ANONYMOUS_ADMIN = ApiKey("anonymous", ADMIN)
CHALLENGE = {"WWW-Authenticate": "Bearer"}
CALLER = "caller"  # where the request's live key is kept on the request state


async def services(request: Request) -> Services:
    """Async like every dependency here that does no blocking work: FastAPI runs a sync one through the thread
    pool, a trip per request."""
    return request.app.state.services


def _refused(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, CHALLENGE)


async def authenticated(request: Request,
                        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> ApiKey:
    """The key store is read again only when its file changes (a stat per request), so the check runs inline."""
    svc: Services = request.app.state.services
    if not svc.settings.require_keys:
        return ANONYMOUS_ADMIN
    if credentials is None:
        raise _refused("send an API key: Authorization: Bearer gk_... (an admin creates keys with "
                       "`geoloc keys create`)")
    key = svc.keys.identify(credentials.credentials)
    if key is None:
        raise _refused("unknown API key")
    state = key.state()
    if state == REVOKED:
        raise _refused(f"API key {key.id} was revoked on {key.revoked}")
    if state == EXPIRED:
        raise _refused(f"API key {key.id} expired on {key.expires}: ask an admin for a new key")
    return key


async def photos_sent(request: Request) -> int:
    """Files in a multipart request (already parsed by FastAPI for the routes that take photos)."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return 0
    form = await request.form()
    return sum(isinstance(value, UploadFile) for _, value in form.multi_items())


async def caller(request: Request, key: Annotated[ApiKey, Depends(authenticated)]) -> ApiKey:
    """The live key, charged one request and the photos it carries (keys switched off: no quotas)."""
    request.scope.setdefault("state", {})[CALLER] = key
    if key is not ANONYMOUS_ADMIN:
        photos = await photos_sent(request)
        if photos:
            note(request, photos=photos)
        quotas = request.app.state.quotas
        if quotas.blocking:
            await run_in_threadpool(quotas.charge, key, photos)
        else:  # counted in this process's memory: microseconds, less than a trip through the thread pool
            quotas.charge(key, photos)
    return key


async def admin(request: Request, key: Annotated[ApiKey, Depends(caller)]) -> ApiKey:
    key.require_admin(request.path_params.get("name"))
    return key


async def admin_creating(key: Annotated[ApiKey, Depends(caller)], body: NewCollection) -> ApiKey:
    """For POST /v1/collections: reads the same `body` the route does (FastAPI parses it once)."""
    key.require_admin(body.name)
    return key


Caller = Annotated[ApiKey, Depends(caller)]
Admin = Annotated[ApiKey, Depends(admin)]
AdminCreating = Annotated[ApiKey, Depends(admin_creating)]
Svc = Annotated[Services, Depends(services)]
