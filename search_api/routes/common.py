"""Helpers the routes share: parsing collection lists, reading a query photo, photo URLs, checked JSON answers."""

from __future__ import annotations

import uuid

from fastapi import Response, UploadFile
from PIL import Image
from pydantic import TypeAdapter

from geoloc.names import check_collection_name
from geoloc.settings import Settings
from geoloc.ingest.images import open_image, to_rgb
from geoloc.ingest.records import point_id, sha256_hex
from geoloc.search_api.errors import ApiError
from geoloc.search_api.limits import read_upload


def parse_collections(value: str | None) -> list[str] | None:
    """'a, b' -> ['a', 'b']; nothing -> None."""
    names = [name.strip() for name in (value or "").split(",") if name.strip()]
    try:
        return [check_collection_name(name) for name in names] or None
    except ValueError as exc:
        raise ApiError(422, "invalid_collection", str(exc)) from exc


def checked_name(name: str) -> str:
    try:
        return check_collection_name(name)
    except ValueError as exc:
        raise ApiError(422, "invalid_collection", str(exc)) from exc


# a query JPEG is decoded at the smallest of 1/1..1/8 scale keeping both sides >= this: every encoder here reads
# 224-336 px; a 12 MP photo then decodes in a fifth of the time, its embedding within 0.001 cosine of the full one
QUERY_DECODE_SIDE = 512


def read_photo(upload: UploadFile, settings: Settings) -> tuple[Image.Image, str]:
    """A query photo, decoded within the byte and pixel limits (ImageError -> 413/422) at the scale it is used
    (locate, similar and explain all see the same pixels), and the SHA-256 of its bytes."""
    data = read_upload(upload, settings.max_photo_bytes)
    return to_rgb(open_image(data, settings.max_pixels, min_side=QUERY_DECODE_SIDE)), sha256_hex(data)


def checked_json(model: TypeAdapter, content) -> Response:
    """`content` validated against the route's response model and serialised once, on the route's own thread, as
    FastAPI would (by alias): a sync route's returned value is validated on a second trip through the thread
    pool, a tenth of a millisecond or more per request."""
    return Response(model.dump_json(model.validate_python(content), by_alias=True), media_type="application/json")


def image_id(collection: str, value: str) -> str:
    """A photo's point id from its id or from the SHA-256 of its bytes."""
    if len(value) == 64 and all(c in "0123456789abcdef" for c in value.lower()):
        return point_id(collection, value.lower())
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ApiError(422, "invalid_id", f"{value!r} is neither a photo id (UUID) nor a SHA-256") from None


def photo_url(collection: str, point: str) -> str:
    return f"/v1/collections/{collection}/images/{point}/photo"


def stored_photo(svc, key, name: str, image: str):
    """The gallery point of a photo of collection `name` the key may read (its id or SHA-256), or a 404."""
    key.scope([checked_name(name)])
    hits = svc.gallery().retrieve([image_id(name, image)])
    if not hits or hits[0].payload.get("collection") != name:
        raise ApiError(404, "no_photo", f"collection '{name}' holds no photo {image}")
    return hits[0]


def no_original() -> ApiError:
    return ApiError(404, "no_original", "geoloc holds no copy of this photo's original (indexed before copies were "
                                        "kept, or removed since)")
