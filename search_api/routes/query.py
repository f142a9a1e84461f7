"""Locate photos and find similar located photos: reader endpoints, audited.

Both take one photo or several (the `photo` field repeated, up to GEOLOC_MAX_BATCH_PHOTOS): the model runs
once over them all. One photo is answered as such; several are answered `{"answers": [...]}`, one answer
per photo in the order sent. Every photo counts against the key's photo quota."""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from pydantic import TypeAdapter

from geoloc.gallery.base import SearchFilter
from geoloc.aggregation import AGGREGATORS
from geoloc.calibration import RADII_KM
from geoloc.cells import corners
from geoloc.geodesy import haversine_km
from geoloc.locate import Locator
from geoloc.places import nearest_places
from geoloc.search_api.audit_requests import answered, details
from geoloc.search_api.auth import Caller, Svc
from geoloc.search_api.errors import ERROR_RESPONSES, ApiError, documented
from geoloc.search_api.routes.common import checked_json, parse_collections, photo_url, read_photo
from geoloc.search_api.schemas import LocateAnswers, LocateResponse, SimilarAnswers, SimilarResponse
from geoloc.zero_shot import PRIORS

router = APIRouter(tags=["search"], responses={
    **ERROR_RESPONSES, 409: documented(409, "The gallery or the model cannot answer this yet", "not_ready",
                                       "news holds no photos yet: index some first (geoloc index PATH)")})

MAX_K = 100
PhotoField = Annotated[list[UploadFile], File(
    description="The photo: JPEG, PNG, WebP or TIFF; repeat the field to send several")]
KField = Annotated[int, Form(ge=1, le=MAX_K, description="Neighbours to retrieve")]
CollectionsField = Annotated[str | None, Form(
    description="Comma-separated collections to search; default: every collection the key may search",
    examples=["news,archive"])]
Audit = Annotated[dict, Depends(details)]  # what this request's audit line says it searched and answered
LOCATED, SIMILAR = TypeAdapter(LocateResponse | LocateAnswers), TypeAdapter(SimilarResponse | SimilarAnswers)


async def batch_within_limit(request: Request) -> None:
    """Refuse too many photos before the key is charged for them."""
    most = request.app.state.services.settings.max_batch_photos
    sent = len((await request.form()).getlist("photo"))
    if sent > most:
        raise ApiError(413, "too_many_photos", f"{sent} photos in one request; send at most {most} "
                                               f"(GEOLOC_MAX_BATCH_PHOTOS) per request")


Batch = Depends(batch_within_limit)


def _answered(model: TypeAdapter, request: Request, audit: dict, answers: list[dict], what: list[dict]):
    """One photo: its answer as is; several: {"answers": [...]}. The audit line records each, written here once
    the answer is checked."""
    if len(answers) == 1:
        audit.update(what[0])
        response = checked_json(model, answers[0])
    else:
        audit["answers"] = what
        response = checked_json(model, {"answers": answers})
    answered(request)
    return response


@router.post("/locate", response_model=LocateResponse | LocateAnswers, dependencies=[Batch],
             summary="Where was this photo taken?",
             description="The estimated location, its evidence (the most similar located photos) and, "
                         "with a model bundle, the likely cells and a confidence. With a bundle the search "
                         "is Search-within-Cell: the top K inside the predicted cell(s).")
def locate(request: Request, svc: Svc, key: Caller, audit: Audit, photo: PhotoField, k: KField = 10,
           collections: CollectionsField = None,
           top_cells: Annotated[int, Form(ge=1, le=20, description="With a bundle or a prior: cells to search")] = 1,
           aggregator: Annotated[Literal[AGGREGATORS.names()], Form(
               description="How the neighbours become one answer (cluster: DBSCAN, the paper's)")] = "cluster",
           min_confidence: Annotated[float | None, Form(ge=0, le=1, description=(
               "Mark the answer as not confident (abstained, still with its best guess) when its probability "
               "of lying within `within_km` is under this"))] = None,
           within_km: Annotated[Literal[tuple(f"{r:g}" for r in RADII_KM)], Form(
               description="The radius `confidence` speaks of, in km")] = "25",
           prior: Annotated[Literal[PRIORS] | None, Form(description=(
               "zero-shot: Search-within-Cell without a trained classifier, the cells' probabilities from a "
               "CLIP-family model's text tower and the names of the gallery's places; default: none"))] = None):
    requested = audit["collections"] = parse_collections(collections)
    audit.update(k=k, top_cells=top_cells, prior=prior)
    scope = audit["collections"] = key.scope(requested)
    images, digests = zip(*(read_photo(upload, svc.settings) for upload in photo))
    embedder, gallery = svc.serving()
    locator = Locator(embedder, gallery, k=k, aggregator=aggregator, collections=scope, top_cells=top_cells,
                      min_confidence=min_confidence, within_km=float(within_km), prior=prior,
                      home=svc.settings.home)
    svc.check_ready(locator)
    located = locator.locate_features(svc.features(embedder, list(images)), list(digests))
    answers = [_located(a.to_dict(), scope, embedder.model_id) for a in located]
    what = [{"answer": {"lat": a["lat"], "lon": a["lon"], "method": a["method"],
                        "cell": (a["cell"] or {}).get("token"), "confidence": a["confidence"]}} for a in answers]
    return _answered(LOCATED, request, audit, answers, what)


def _located(answer: dict, scope: list[str] | None, model: str) -> dict:
    for n in answer["neighbours"]:
        n["photo_url"] = photo_url(n["collection"], n["id"])
    for cell in filter(None, [answer["cell"], *answer["candidates"]]):
        cell["corners"] = corners(cell["token"])
    return {**answer, "collections": scope, "model": model}


@router.post("/similar", response_model=SimilarResponse | SimilarAnswers, dependencies=[Batch],
             summary="The most similar located photos",
             description="Plain retrieval, optionally only within `radius_km` of (`lat`, `lon`).")
def similar(request: Request, svc: Svc, key: Caller, audit: Audit, photo: PhotoField, k: KField = 10,
            collections: CollectionsField = None,
            lat: Annotated[float | None, Form(ge=-90, le=90, description="Centre latitude")] = None,
            lon: Annotated[float | None, Form(ge=-180, le=180, description="Centre longitude")] = None,
            radius_km: Annotated[float | None, Form(gt=0, le=20040, description="Radius around the centre")] = None):
    given = [v is not None for v in (lat, lon, radius_km)]
    if any(given) and not all(given):
        raise ApiError(422, "invalid_request", "lat, lon and radius_km go together: give all three or none")
    requested = audit["collections"] = parse_collections(collections)
    centre = (lat, lon, radius_km) if all(given) else None
    audit.update(k=k, centre=centre)
    scope = audit["collections"] = key.scope(requested)
    images = [read_photo(upload, svc.settings)[0] for upload in photo]
    embedder, gallery = svc.serving()
    gallery.check_model(embedder.model_id)
    answers, what = [], []
    for vector in embedder.vectors(svc.features(embedder, images)):
        hits = gallery.search(vector, k, SearchFilter(collections=scope, radius=centre))
        answers.append({"neighbours": _neighbours(hits, centre), "collections": scope, "model": embedder.model_id})
        what.append({"results": len(hits), **({"answer": {"lat": hits[0].lat, "lon": hits[0].lon}} if hits else {})})
    return _answered(SIMILAR, request, audit, answers, what)


def _neighbours(hits: list, centre: tuple | None) -> list[dict]:
    lats, lons = np.array([h.lat for h in hits]), np.array([h.lon for h in hits])
    km = haversine_km(lats, lons, centre[0], centre[1]) if centre and hits else [None] * len(hits)
    places = nearest_places(lats, lons)
    return [{"id": h.id, "lat": h.lat, "lon": h.lon, "similarity": h.score,
             "km": None if d is None else float(d), "collection": h.payload.get("collection", ""),
             "source": h.payload.get("source", ""), "place": place.to_dict(),
             "photo_url": photo_url(h.payload.get("collection", ""), h.id)} for h, d, place in zip(hits, km, places)]
