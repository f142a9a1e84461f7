"""Size limits: the whole request body, checked while it streams in, and each uploaded photo."""

from __future__ import annotations

from fastapi import UploadFile
from starlette.exceptions import HTTPException

from geoloc.search_api.errors import ApiError, error_response


def mib(n: int) -> str:
    return f"{n / (1 << 20):g} MiB"


class BodyLimit:
    """ASGI middleware: refuse a body over `max_bytes` with 413, from its Content-Length when it sends
    one, else as soon as the streamed bytes pass the limit, before the rest is read.

    The refusal is raised from `receive` as an HTTPException, which FastAPI's body parsing passes on
    untouched to the app's JSON error handler.
    """

    def __init__(self, app, max_bytes: int, hint: str):
        self.app, self.max_bytes = app, max_bytes
        self.message = f"the request is larger than {mib(max_bytes)}: {hint}"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await error_response(413, "too_large", self.message)(scope, receive, send)
        seen = 0

        async def counting_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, self.message)
            return message

        await self.app(scope, counting_receive, send)


def read_upload(upload: UploadFile, max_bytes: int) -> bytes:
    """The file's bytes, refusing more than `max_bytes` (read no further than one byte past it)."""
    data = upload.file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ApiError(413, "too_large", f"{upload.filename or 'the photo'} is larger than {mib(max_bytes)} "
                                         f"(GEOLOC_MAX_PHOTO_BYTES)")
    if not data:
        raise ApiError(422, "empty_file", f"{upload.filename or 'the photo'} is empty")
    return data
