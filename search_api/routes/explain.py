"""Which parts of a photo its answer rests on: occlusion sensitivity over a grid (geoloc.explain). A reader
endpoint, audited and charged like locate; it searches the collections the key may search."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, UploadFile
from pydantic import BaseModel, Field

from geoloc.explain import DEFAULT_GRID, GRID_RANGE, TARGETS, explain
from geoloc.locate import Locator
from geoloc.search_api.audit_requests import details
from geoloc.search_api.auth import Caller, Svc
from geoloc.search_api.errors import ERROR_RESPONSES, documented
from geoloc.search_api.routes.common import read_photo

router = APIRouter(tags=["search"], responses={
    **ERROR_RESPONSES, 409: documented(409, "The gallery or the model cannot answer this yet", "not_ready",
                                       "news holds no photos yet: index some first (geoloc index PATH)")})


class Point(BaseModel):
    lat: float
    lon: float


class ExplainResponse(BaseModel):
    model_config = {"json_schema_extra": {"examples": [{
        "rows": 3, "cols": 3, "importance": [[0.0, 0.12, 0.05], [0.31, 1.0, 0.44], [0.02, 0.2, 0.0]],
        "target": "retrieval", "answer": {"lat": 48.8582, "lon": 2.295}}]}}
    rows: int
    cols: int
    importance: list[list[float]] = Field(description="rows lists of cols numbers in [0, 1], top row first: how "
                                                       "much covering that part of the photo lowers the score (1: "
                                                       "the most; all 0: no part lowers it)")
    target: Literal[TARGETS] = Field(description="The score: 'cell', the probability of the predicted cell (with a "
                                                 "model bundle); 'retrieval', the similarity to the reference "
                                                 "photos the answer rests on")
    answer: Point = Field(description="The answer explained: what POST /v1/locate answers for this photo")


@router.post("/explain", response_model=ExplainResponse, summary="Which parts of the photo the answer rests on",
             description="Each cell of a grid over the photo is covered in turn by a flat patch; the importance "
                         "of a cell is how much that lowers the score the answer was decided by. Costs one "
                         "model pass per grid cell (7 x 7 by default), batched.")
def explain_photo(svc: Svc, key: Caller, audit: Annotated[dict, Depends(details)],
                  photo: Annotated[UploadFile, File(description="The photo: JPEG, PNG, WebP, TIFF or HEIC")],
                  grid: Annotated[int, Form(ge=GRID_RANGE[0], le=GRID_RANGE[1],
                                            description="Rows and columns of the grid")] = DEFAULT_GRID):
    scope = audit["collections"] = key.scope(None)
    image, digest = read_photo(photo, svc.settings)
    embedder, gallery = svc.serving()
    locator = Locator(embedder, gallery, collections=scope, home=svc.settings.home)
    locator.check_ready()
    explanation = explain(image, locator, grid, digest)
    audit.update(grid=grid, answer={"lat": explanation.answer.lat, "lon": explanation.answer.lon,
                                    "target": explanation.target})
    return explanation.to_dict()
