"""Job progress: what an upload, import, prune or re-embed has done so far, and why anything was skipped."""

from __future__ import annotations

from fastapi import APIRouter

from geoloc.search_api.auth import Admin, Svc
from geoloc.search_api.errors import ERROR_RESPONSES, ApiError
from geoloc.search_api.schemas import Job

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=ERROR_RESPONSES)


@router.get("/{job_id}", response_model=Job, responses={404: {"description": "No such job"}},
            summary="A job's state and counts")
def get_job(svc: Svc, _: Admin, job_id: str):
    job = svc.jobs.get(job_id)
    if job is None:
        raise ApiError(404, "no_job", f"no job {job_id} (jobs are kept 30 days)")
    return job
