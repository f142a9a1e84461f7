"""Thumbnails of reference photos: small previews for pages that show many neighbours at once.

A thumbnail's URL names a point, whose id is fixed by its collection and the SHA-256 of its bytes: the URL
always means the same image, so browsers may keep it for good (immutable, ETag from the digest).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse

from geoloc.ingest.thumbnails import MEDIA_TYPE
from geoloc.search_api.auth import Caller, Svc
from geoloc.search_api.errors import ERROR_RESPONSES, documented
from geoloc.search_api.routes.common import no_original, stored_photo

router = APIRouter(prefix="/collections", tags=["collections"], responses=ERROR_RESPONSES)
CACHE = "private, max-age=31536000, immutable"  # private: only keys that may read the collection see it


@router.get("/{name}/images/{image}/thumbnail", response_class=FileResponse, summary="A reference photo's thumbnail",
            description="Upright, longest side 256 px, JPEG; made when the photo was stored (or on the first "
                        "request, for photos stored before thumbnails were made).",
            responses={200: {"content": {MEDIA_TYPE: {}}}, 304: {"description": "The client's copy is current"},
                       404: documented(404, "No such photo, or no copy of it", "no_photo",
                                       "collection 'news' holds no photo 5b0c3c0e-8f9d-5a57-9a52-1f3cb0a9a0c4")})
def get_thumbnail(svc: Svc, key: Caller, request: Request, name: str, image: str):
    digest = stored_photo(svc, key, name, image).payload.get("sha256")
    headers = {"ETag": f'"{digest}-thumbnail"', "Cache-Control": CACHE}
    if headers["ETag"] in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    thumbnail = svc.originals.thumbnail(digest)
    if thumbnail is None:
        raise no_original()
    return FileResponse(thumbnail, media_type=MEDIA_TYPE, headers=headers)
