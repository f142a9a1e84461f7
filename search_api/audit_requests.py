"""One audit line per API request made with a key, refused ones included: ASGI middleware over the app.

Every request that presents a key (valid, unknown, revoked or expired; with keys switched off, every /v1
request, as "anonymous") is written to the audit log once, before its last byte goes out: the key id,
the endpoint, the collections it touched, the status and, for a refusal, the error's code and message.
Routes add what they searched and answered through `details`. Nothing of the request's body (the photo)
is ever written; a key that proves nothing is logged by the id it claims, never its secret.
"""

from __future__ import annotations

import json

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from geoloc.keys import claimed_id
from geoloc.search_api.services import Services

STATE = "audit"
EXCHANGE = "audit_exchange"  # where the request's _Exchange is kept on the request state
MAX_ERROR_BODY = 16 << 10  # error bodies are small JSON; the reason is read from them
MAX_PATH = 300


def _details(scope) -> dict:
    return scope.setdefault("state", {}).setdefault(STATE, {})


async def details(request: Request) -> dict:
    """The request's audit details, for routes to add to: a FastAPI dependency, async since it only reads the
    scope (FastAPI runs a sync one through the thread pool, a trip per request)."""
    return _details(request.scope)


def note(request: Request, **fields) -> None:
    _details(request.scope).update(fields)


def answered(request: Request) -> None:
    """Write the request's line now, as answered (200): for a route that returns its finished response, from the
    route's own thread, which saves the middleware a trip through the thread pool to write it."""
    exchange = request.scope.get("state", {}).get(EXCHANGE)
    if exchange is not None:
        exchange.write(status=200)


def _token(scope) -> str | None:
    """The credentials presented, if any ('' for an Authorization header of another scheme)."""
    for name, value in scope.get("headers") or []:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return None


def _reason(body: bytes) -> dict:
    try:
        error = json.loads(body)["error"]
        return {"reason": str(error["code"]), "message": str(error["message"])}
    except (ValueError, KeyError, TypeError):
        return {}


class _Exchange:
    """One request on its way through: what the audit line needs, gathered as the response goes out."""

    def __init__(self, services: Services, scope, token: str | None):
        self.services, self.scope, self.token = services, scope, token
        self.status: int | None = None
        self.error_body = bytearray()
        self.written = False
        self.details = _details(scope)
        scope["state"][EXCHANGE] = self

    def _who(self) -> dict:
        if not self.services.settings.require_keys:
            return {"key": "anonymous"}
        key = self.services.keys.identify(self.token) if self.token else None
        if key is not None:
            return {"key": key.id}
        claimed = claimed_id(self.token or "")
        return {"key": None, **({"presented": claimed} if claimed else {})}

    def write(self, **override) -> None:
        """Append the line (once)."""
        if self.written:
            return
        self.written = True
        scope, details = self.scope, dict(self.details)
        route = scope.get("route")
        name = (scope.get("path_params") or {}).get("name")
        collections = details.pop("collections", [name] if isinstance(name, str) else [])
        status = override.get("status", self.status)
        outcome = "answered" if status and status < 400 else "refused" if status and status < 500 else "failed"
        fields = {**self._who(), "request": f"{scope['method']} {scope['path'][:MAX_PATH]}", "status": status,
                  "outcome": outcome, **(_reason(bytes(self.error_body)) if outcome != "answered" else {}),
                  **override, **details}
        key = fields.pop("key")
        self.services.audit.record(key, getattr(route, "name", None), collections, **fields)

    async def send(self, message, send) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body":
            if self.status and self.status >= 400 and len(self.error_body) < MAX_ERROR_BODY:
                self.error_body += message.get("body", b"")
            if not message.get("more_body", False) and not self.written:
                await run_in_threadpool(self.write)
        await send(message)


class AuditRequests:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        services: Services = scope["app"].state.services
        token = _token(scope)
        if token is None and (services.settings.require_keys or not scope["path"].startswith("/v1/")):
            return await self.app(scope, receive, send)
        exchange = _Exchange(services, scope, token)
        try:
            await self.app(scope, receive, lambda message: exchange.send(message, send))
        except Exception:
            exchange.write(status=500, reason="internal_error")
            raise
        finally:
            exchange.write()  # a request abandoned before its response: status null


def install(app) -> None:
    """Outside the other middleware, so even a body refused before routing is recorded."""
    app.add_middleware(AuditRequests)
