"""Only an admin key learns where the server keeps things: ASGI middleware over the app.

An error (a gallery that cannot be opened, a queue that cannot be reached ...) may name a server file or
service in its message. Sent to any caller but an admin key (a reader, a refused key, no key), every
such location in a JSON error body is replaced by "[server]": the data home, the import roots, the model
files, the user's home folder, the Qdrant and broker addresses. Admins get the message whole.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

from geoloc.search_api.auth import CALLER
from geoloc.settings import Settings

PLACEHOLDER = "[server]"


def server_locations(settings: Settings) -> list[str]:
    """Longest first, so a folder inside another is replaced whole."""
    paths = [settings.home, *settings.import_roots, Path.home()]
    paths += [Path(p) for p in (settings.checkpoint, settings.bundle) if p]
    found = {str(p) for path in paths for p in (path, path.expanduser().resolve()) if len(p.parts) > 1}
    for url in filter(None, (settings.qdrant_url, settings.broker_url)):
        parts = urlsplit(url)
        found |= {url, parts.netloc} | ({f"{parts.hostname}:{parts.port}"} if parts.port else set())
    return sorted(found - {""}, key=len, reverse=True)


def _hidden(value, locations: list[str]):
    if isinstance(value, str):
        for location in locations:
            value = value.replace(location, PLACEHOLDER)
        return value
    if isinstance(value, dict):
        return {k: _hidden(v, locations) for k, v in value.items()}
    if isinstance(value, list):
        return [_hidden(v, locations) for v in value]
    return value


class HideServerLocations:
    def __init__(self, app, settings: Settings):
        self.app, self.locations = app, server_locations(settings)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, body = None, bytearray()

        async def filtered_send(message):
            nonlocal start
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers") or [])
                if message["status"] >= 400 and headers.get(b"content-type", b"").startswith(b"application/json"):
                    start = message  # held back until the body is whole
                    return
            elif start is not None and message["type"] == "http.response.body":
                body.extend(message.get("body", b""))
                if message.get("more_body", False):
                    return
                caller = scope.get("state", {}).get(CALLER)
                content = bytes(body) if caller is not None and caller.is_admin else self._hide(bytes(body))
                headers = [(k, v) for k, v in start.get("headers") or [] if k != b"content-length"]
                await send({**start, "headers": [*headers, (b"content-length", str(len(content)).encode())]})
                message = {**message, "body": content}
            await send(message)

        await self.app(scope, receive, filtered_send)

    def _hide(self, body: bytes) -> bytes:
        try:
            document = json.loads(body)
        except ValueError:
            return body
        return json.dumps(_hidden(document, self.locations), ensure_ascii=False, separators=(",", ":")).encode()


def install(app, settings: Settings) -> None:
    app.add_middleware(HideServerLocations, settings=settings)
