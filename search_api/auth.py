"""Who is calling: the API key from `Authorization: Bearer ...`, as a FastAPI dependency."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from geoloc.keys import ADMIN, ApiKey
from geoloc.search_api.errors import ApiError
from geoloc.search_api.services import Services

bearer = HTTPBearer(auto_error=False, description="An API key from `geoloc keys create`: gk_...")

# every caller, when keys are switched off for a trusted loopback (GEOLOC_REQUIRE_KEYS=0)
ANONYMOUS_ADMIN = ApiKey("anonymous", ADMIN)


def services(request: Request) -> Services:
    return request.app.state.services


def caller(request: Request,
           credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> ApiKey:
    svc = services(request)
    if not svc.settings.require_keys:
        return ANONYMOUS_ADMIN
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None:
        raise ApiError(401, "unauthorized", "send an API key: Authorization: Bearer gk_... "
                                            "(an admin creates keys with `geoloc keys create`)", challenge)
    key = svc.keys.authenticate(credentials.credentials)
    if key is None:
        raise ApiError(401, "unauthorized", "unknown or revoked API key", challenge)
    return key


def admin(key: Annotated[ApiKey, Depends(caller)]) -> ApiKey:
    key.require_admin()
    return key


Caller = Annotated[ApiKey, Depends(caller)]
Admin = Annotated[ApiKey, Depends(admin)]
Svc = Annotated[Services, Depends(services)]
