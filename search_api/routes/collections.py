"""Reference collections: list and declare them, add photos (upload or server-side import), delete photos
or whole collections, prune and re-embed. Everything but reading is for admin keys; the long work runs
as jobs."""

from __future__ import annotations

import mimetypes
from itertools import islice
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Body, File, Form, Response, UploadFile
from fastapi.responses import FileResponse, JSONResponse

from geoloc import retention
from geoloc.gallery.base import SearchFilter
from geoloc.job_store import Outcome
from geoloc.jobs import prune_region_filter
from geoloc.imports import check_import_path
from geoloc.ingest.coordinates import GpsError, validate_coordinates
from geoloc.ingest.records import point_id
from geoloc.search_api.auth import Admin, AdminCreating, Caller, Svc
from geoloc.search_api.errors import ERROR_RESPONSES, ApiError, documented
from geoloc.search_api.routes.common import checked_name, image_id, no_original, photo_url, stored_photo
from geoloc.search_api.schemas import (
    CollectionInfo,
    CollectionList,
    Deleted,
    ImagePage,
    ImportRequest,
    JobAccepted,
    Limit,
    NewCollection,
    Offset,
    PrunePreview,
    PruneRequest,
    ReembedRequest,
)
from geoloc.search_api.services import Services

router = APIRouter(prefix="/collections", tags=["collections"], responses=ERROR_RESPONSES)
NOT_FOUND = {404: documented(404, "No such collection or photo", "no_collection",
                             "no collection named 'news': create it first with POST /v1/collections")}
PREVIEW = 20  # photos a prune's dry run shows


def _existing(svc: Services) -> dict[str, int]:
    """Every collection, declared or holding photos, with its photo count."""
    counts = svc.gallery().collections()
    return {name: counts.get(name, 0) for name in set(counts) | set(svc.registry.all())}


def _require(svc: Services, name: str) -> None:
    if checked_name(name) not in _existing(svc):
        raise ApiError(404, "no_collection", f"no collection named '{name}': create it first with "
                                             f"POST /v1/collections")


def _accepted(svc: Services, response: Response, job_id: str, photos: list | None = None) -> dict:
    response.headers["Location"] = f"/v1/jobs/{job_id}"
    return {"job": svc.jobs.get(job_id), "photos": photos}


@router.get("", response_model=CollectionList, summary="Collections this key may read, with photo counts")
def list_collections(svc: Svc, key: Caller):
    existing = _existing(svc)
    declared = svc.registry.all()
    names = [n for n in existing if key.reaches(n)]
    return {"collections": [{"name": n, "photos": existing[n], **declared.get(n, {})} for n in sorted(names)]}


@router.post("", response_model=CollectionInfo, status_code=201, summary="Declare a collection",
             responses={409: documented(409, "The name is taken", "exists", "collection 'news' already exists")})
def create_collection(svc: Svc, _: AdminCreating, body: NewCollection):
    if body.name in _existing(svc):
        raise ApiError(409, "exists", f"collection '{body.name}' already exists")
    entry = svc.registry.add(body.name, body.description)
    if entry is None:
        raise ApiError(409, "exists", f"collection '{body.name}' already exists")
    return {"name": body.name, "photos": 0, **entry}


@router.get("/{name}", response_model=CollectionInfo, responses=NOT_FOUND, summary="One collection")
def get_collection(svc: Svc, key: Caller, name: str):
    key.scope([checked_name(name)])
    _require(svc, name)
    return {"name": name, "photos": svc.gallery().collections().get(name, 0), **svc.registry.all().get(name, {})}


@router.delete("/{name}", response_model=Deleted, responses=NOT_FOUND,
               summary="Delete a collection: its photos in every model's store, its jobs, its stored originals",
               description="Its queued and running jobs are cancelled (they end `cancelled` and add nothing "
                           "afterwards), and the stored originals of its photos go unless another collection "
                           "holds the same photo.")
def delete_collection(svc: Svc, _: Admin, name: str):
    _require(svc, name)
    deleted = retention.delete_collection(svc.runtime.every_store(), svc.jobs.store, svc.originals, name)
    svc.registry.remove(name)
    return {"deleted": deleted}


@router.post("/{name}/images", response_model=JobAccepted, status_code=202, responses=NOT_FOUND,
             summary="Add photos: a multipart batch, indexed by a job",
             description="Coordinates come from the `lat` and `lon` fields, one of each per photo in the "
                         "order of the photos (an empty pair: read EXIF GPS), or, with no `lat`/`lon` at "
                         "all, from each photo's EXIF. A photo that cannot be used (no GPS, undecodable, "
                         "over GEOLOC_MAX_PHOTO_BYTES ...) is skipped with its reason in the job; the rest "
                         "are indexed. A photo's id is fixed by its bytes: sending it again never "
                         "duplicates it.")
def upload_images(svc: Svc, key: Admin, response: Response, name: str,
                  photos: Annotated[list[UploadFile], File(description="The photos")],
                  lat: Annotated[list[str] | None, Form(description="Latitude per photo (or none)")] = None,
                  lon: Annotated[list[str] | None, Form(description="Longitude per photo (or none)")] = None):
    settings = svc.settings
    if len(photos) > settings.max_batch_photos:
        raise ApiError(413, "too_many_photos", f"{len(photos)} photos in one request; send at most "
                                               f"{settings.max_batch_photos} (GEOLOC_MAX_BATCH_PHOTOS) per request")
    lat, lon = lat or [], lon or []
    if (lat or lon) and not (len(lat) == len(lon) == len(photos)):
        raise ApiError(422, "invalid_request", f"{len(photos)} photos but {len(lat)} lat and {len(lon)} lon: "
                                               f"send one of each per photo (empty for EXIF), or none")
    _require(svc, name)
    stored: set[str] = set()
    try:
        pre, items, listing = _spool(svc, name, photos, lat, lon, stored)
        job_id = svc.jobs.index(name, items, key.id, pre, kind="upload", roots=[svc.originals.directory],
                                originals=sorted(stored))
    except Exception:  # no job will read what this request stored: it goes, unless something else needs it
        retention.release_quietly(svc.runtime.every_store, svc.jobs.store, svc.originals, stored)
        raise
    return _accepted(svc, response, job_id, listing)


def _spool(svc: Services, name: str, photos: list[UploadFile], lat: list[str], lon: list[str],
           stored: set[str]) -> tuple[Outcome, list[dict], list[dict]]:
    """(refused up front, items to index, the listing answered) of an upload; `stored` collects the digests
    of the copies kept for the job."""
    pre, items, listing, seen = Outcome(), [], [], set()
    for i, upload in enumerate(photos):
        source = upload.filename or f"photo {i + 1}"
        given = (lat[i].strip(" \t"), lon[i].strip(" \t")) if lat else ("", "")  # as ingest.coordinates reads them
        reason, digest, path = _accept(svc, upload, given, seen)
        if reason is not None:
            pre.skip(source, reason)
            listing.append({"filename": source, "id": None, "sha256": digest, "status": "skipped",
                            "reason": reason})
            continue
        stored.add(digest)
        items.append({"path": str(path), "source": source, "lat": given[0] or None, "lon": given[1] or None})
        listing.append({"filename": source, "id": point_id(name, digest), "sha256": digest, "status": "queued"})
    return pre, items, listing


def _accept(svc: Services, upload: UploadFile, coordinates: tuple[str, str],
            seen: set[str]) -> tuple[str | None, str | None, Path | None]:
    """(reason it is refused or None, sha256, stored path) of one uploaded photo. Refusals decided here
    are those that need no decoding; the worker finds the rest."""
    if coordinates != ("", ""):
        try:
            validate_coordinates(*coordinates)
        except GpsError as exc:
            return str(exc), None, None
    data = upload.file.read(svc.settings.max_photo_bytes + 1)
    if len(data) > svc.settings.max_photo_bytes:
        return "file_too_large", None, None
    if not data:
        return "empty_file", None, None
    digest, path = svc.originals.put(data)  # content-addressed: a duplicate takes no more room
    if digest in seen:
        return "duplicate_photo", digest, None
    seen.add(digest)
    return None, digest, path


@router.post("/{name}/imports", response_model=JobAccepted, status_code=202, responses=NOT_FOUND,
             summary="Add a server-side folder or CSV manifest, indexed by a job",
             description="Only paths under the server's import roots (GEOLOC_IMPORT_ROOTS) are accepted, and "
                         "only files that lie inside them, once every symlink is followed, are read (the "
                         "others are skipped as `outside_import_root`).")
def import_source(svc: Svc, key: Admin, response: Response, name: str, body: ImportRequest):
    _require(svc, name)
    path = check_import_path(body.path, svc.settings.import_roots)
    return _accepted(svc, response, svc.jobs.import_source(name, path, key.id, svc.settings.import_roots))


@router.get("/{name}/images", response_model=ImagePage, responses=NOT_FOUND,
            summary="The photos of a collection, a page at a time")
def list_images(svc: Svc, key: Caller, name: str, limit: Limit = 50, offset: Offset = 0):
    key.scope([checked_name(name)])
    _require(svc, name)
    gallery, where = svc.gallery(), SearchFilter(collections=[name])
    hits = islice(gallery.scroll(where, batch=min(offset + limit, 512)), offset, offset + limit)
    items = [{"id": h.id, "source": h.payload.get("source", ""), "lat": h.lat, "lon": h.lon,
              "photo_url": photo_url(name, h.id)} for h in hits]
    return {"items": items, "total": gallery.count(where), "limit": limit, "offset": offset}


@router.delete("/{name}/images/{image}", response_model=Deleted, responses=NOT_FOUND,
               summary="Remove one photo (by id, or by the SHA-256 of its bytes)")
def delete_image(svc: Svc, _: Admin, name: str, image: str):
    deleted = svc.gallery().delete(SearchFilter(collections=[checked_name(name)]), ids=[image_id(name, image)])
    if not deleted:
        raise ApiError(404, "no_photo", f"collection '{name}' holds no photo {image}")
    return {"deleted": deleted}


@router.get("/{name}/images/{image}/photo", response_class=FileResponse, responses=NOT_FOUND,
            summary="The original of a reference photo (evidence of an answer)",
            description="Served from geoloc's own copy, kept when the photo was indexed.")
def get_photo(svc: Svc, key: Caller, name: str, image: str):
    hit = stored_photo(svc, key, name, image)
    original = svc.originals.find(hit.payload.get("sha256"))
    if original is None:
        raise no_original()
    media_type = mimetypes.guess_type(hit.payload.get("source", ""))[0] or "application/octet-stream"
    return FileResponse(original, media_type=media_type)


@router.post("/{name}/prune", response_model=JobAccepted, status_code=202,
             responses={**NOT_FOUND, 200: {"model": PrunePreview, "description": "A dry run: what would go"}},
             summary="Remove the photos in a region, or the unplaceable ones, by a job",
             description="With `dry_run`, nothing is removed and no job starts: the answer (200) counts the "
                         "photos of the box and/or radius the prune would remove, with a sample of them.")
def prune(svc: Svc, key: Admin, response: Response, name: str, body: Annotated[PruneRequest, Body()]):
    if body.unplaceable and body.dry_run:
        raise ApiError(422, "invalid_request", "a dry run previews a box or a radius: which photos are unplaceable "
                                               "is known only once the classifier has run over them (a prune job)")
    if body.unplaceable and svc.embedder.bundle is None:
        raise ApiError(422, "needs_bundle", "pruning unplaceable photos needs a model bundle: start the "
                                            "server with GEOLOC_BUNDLE set")
    _require(svc, name)
    box = [body.box.south, body.box.west, body.box.north, body.box.east] if body.box else None
    radius = [body.radius.lat, body.radius.lon, body.radius.km] if body.radius else None
    if body.dry_run:
        return _prune_preview(svc.gallery(), name, prune_region_filter(name, box, radius))
    job_id = svc.jobs.prune(svc.gallery(), name, key.id, box=box, radius=radius, unplaceable=body.unplaceable)
    return _accepted(svc, response, job_id)


def _prune_preview(gallery, name: str, where: SearchFilter) -> JSONResponse:
    sample = [{"id": h.id, "source": h.payload.get("source", ""), "lat": h.lat, "lon": h.lon,
               "photo_url": photo_url(name, h.id)} for h in islice(gallery.scroll(where, batch=PREVIEW), PREVIEW)]
    preview = PrunePreview(would_remove=gallery.count(where), sample=sample)
    return JSONResponse(preview.model_dump(), status_code=200)


@router.post("/{name}/reembed", response_model=JobAccepted, status_code=202, responses=NOT_FOUND,
             summary="Embed a collection again, from its stored originals: in place, or with another model",
             description="With an encoder: the photos are embedded by that model into its own store while the "
                         "serving model keeps answering; queries switch to it once its store holds every photo "
                         "of every collection. Without one: again in place with the serving model.")
def reembed(svc: Svc, key: Admin, response: Response, name: str,
            request: Annotated[ReembedRequest | None, Body()] = None):
    _require(svc, name)
    target = None
    if request is not None and request.encoder is not None:
        target = request.encoder.model_dump()
        for option in ("checkpoint", "bundle"):  # server files: only from where imports may read
            if target[option]:
                target[option] = str(check_import_path(target[option], svc.settings.import_roots))
    return _accepted(svc, response, svc.jobs.reembed(svc.gallery(), name, key.id, target))
