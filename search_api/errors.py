"""Every error as JSON a person can act on: {"error": {"status", "code", "message"}}.

Domain exceptions map to statuses here, once, so routes raise what the core raises. Only a bug gives
a 500, and its message never echoes internals. What the server needs and cannot use right now (the
gallery, the job queue, the disk under the data home, a lock another process holds) is a 503 with
Retry-After: the same request may succeed later.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from filelock import Timeout
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from geoloc.gallery.base import GalleryError
from geoloc.locate import LocateError
from geoloc.ingest.images import ImageError
from geoloc.ingest.sources import SourceError

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5  # what a 503 asks a client to wait before trying again


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_body(status: int, code: str, message: str) -> dict:
    return {"error": {"status": status, "code": code, "message": message}}


def error_response(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, code, message), status_code=status, headers=headers)


def unavailable(code: str, message: str) -> JSONResponse:
    return error_response(503, code, message, {"Retry-After": str(RETRY_AFTER_S)})


def _storage_fault(exc: OSError) -> JSONResponse:
    """An OSError that reached a route: the data home's disk or a lock on it, never the caller's doing."""
    if isinstance(exc, Timeout):
        return unavailable("busy", f"{exc.lock_file} is locked by another process: retry shortly; if this lasts, "
                                   f"look for a stuck geoloc process")
    where = f" {exc.filename}" if exc.filename else ""
    return unavailable("storage_unavailable", f"the server cannot use{where}: {exc.strerror or exc}: check the "
                                              f"disk, its free space and the permissions of GEOLOC_HOME")


IMAGE_MESSAGES = {
    "undecodable_image": "the photo could not be decoded: send a JPEG, PNG, WebP or TIFF file",
    "too_many_pixels": "the photo has more pixels than this server accepts (GEOLOC_MAX_PIXELS)",
    "extreme_aspect_ratio": "the photo is a sliver (one side over 50 times the other): send a photo",
}


def _field(loc) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "form")]
    return ".".join(parts) or "request"


def _validation_message(exc: RequestValidationError) -> str:
    messages = []
    for error in exc.errors():
        text = "this field is required" if error.get("type") == "missing" else error.get("msg", "invalid")
        messages.append(f"{_field(error.get('loc', ()))}: {text}")
    return "; ".join(messages)


def _broker_errors() -> tuple[type[Exception], ...]:
    from kombu.exceptions import OperationalError
    from redis.exceptions import ConnectionError, TimeoutError

    return OperationalError, ConnectionError, TimeoutError


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError):
        return error_response(422, "invalid_request", _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        if exc.status_code == 404 and message == "Not Found":
            message = "no such endpoint: see /docs for the API"
        return error_response(exc.status_code, code, message, getattr(exc, "headers", None))

    @app.exception_handler(PermissionError)
    async def forbidden(_: Request, exc: PermissionError):
        if exc.errno is not None:  # the disk refused the server, not the server the caller
            return _storage_fault(exc)
        return error_response(403, "forbidden", str(exc))

    @app.exception_handler(OSError)
    async def storage(_: Request, exc: OSError):
        log.warning("storage fault: %s", exc)
        return _storage_fault(exc)

    @app.exception_handler(ImageError)
    async def bad_image(_: Request, exc: ImageError):
        reason = str(exc)
        status = 413 if reason == "too_many_pixels" else 422
        return error_response(status, reason, IMAGE_MESSAGES.get(reason, reason))

    @app.exception_handler(SourceError)
    async def bad_source(_: Request, exc: SourceError):
        return error_response(422, "invalid_source", str(exc))

    @app.exception_handler(LocateError)
    async def not_ready(_: Request, exc: LocateError):
        return error_response(409, "not_ready", str(exc))

    @app.exception_handler(GalleryError)
    async def gallery_unavailable(_: Request, exc: GalleryError):
        return unavailable("gallery_unavailable", str(exc))

    for broker_error in _broker_errors():
        @app.exception_handler(broker_error)
        async def queue_unavailable(_: Request, exc: Exception):
            return unavailable("queue_unavailable", f"the job queue (GEOLOC_BROKER_URL) is unreachable: {exc}")

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "an internal error occurred; it has been logged")


class ErrorDetail(BaseModel):
    status: int = Field(description="The HTTP status, again")
    code: str = Field(description="What went wrong, for programs: `unauthorized`, `no_collection`, ...")
    message: str = Field(description="What went wrong and what to do, for people")


class ErrorBody(BaseModel):
    """The body of every error the API answers."""
    error: ErrorDetail


def documented(status: int, description: str, code: str, message: str) -> dict:
    """An OpenAPI `responses` entry for an error: the one error schema, with an example."""
    return {"model": ErrorBody, "description": description,
            "content": {"application/json": {"example": error_body(status, code, message)}}}


# documented on every /v1 route: what any keyed request can be answered besides its own errors
ERROR_RESPONSES = {
    401: documented(401, "No key, or an unknown, expired or revoked one", "unauthorized",
                    "send an API key: Authorization: Bearer gk_..."),
    403: documented(403, "The key may not do this", "forbidden",
                    "key 3f2a9c1b0d4e may not search archive; it may search news"),
    413: documented(413, "A photo or the request is too large", "too_large", "the photo is larger than 20 MiB"),
    422: documented(422, "Bad input (missing field, corrupt photo ...)", "invalid_request",
                    "k: Input should be less than or equal to 100"),
    429: documented(429, "The key is over a quota: retry after the Retry-After header's seconds",
                    "too_many_requests", "key 3f2a9c1b0d4e may send 600 requests per minute: try again in 12 s, "
                                         "or ask an admin for a key with a higher quota"),
    503: documented(503, "The gallery, the job queue or the disk cannot be used now: retry after the "
                         "Retry-After header's seconds", "gallery_unavailable",
                    "the gallery directory /data/gallery is missing (deleted, or its volume is not mounted): "
                    "restore it from a backup or mount its volume again"),
}
