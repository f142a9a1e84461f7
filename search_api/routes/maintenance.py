"""Gallery maintenance for admin keys: build the vector index again, as a job (geoloc.maintenance_index)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from geoloc.search_api.auth import Admin, Svc
from geoloc.search_api.errors import ERROR_RESPONSES
from geoloc.search_api.schemas import JobAccepted

router = APIRouter(prefix="/maintenance", tags=["maintenance"], responses=ERROR_RESPONSES)


@router.post("/index", response_model=JobAccepted, status_code=202,
             summary="Build the gallery's vector index again, while it keeps answering",
             description="A job (collection `*`: every one) that builds the HNSW index of every model's store. "
                         "Searches go on meanwhile. The embedded gallery also does it on its own after "
                         "GEOLOC_INDEX_AFTER_UPSERTS upserted photos; a Qdrant server indexes by itself.")
def build_index(svc: Svc, key: Admin, response: Response):
    points = sum(gallery.count() for gallery in svc.runtime.every_store())
    job_id = svc.jobs.build_index(key.id, points)
    response.headers["Location"] = f"/v1/jobs/{job_id}"
    return {"job": svc.jobs.get(job_id), "photos": None}
