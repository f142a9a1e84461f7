"""Job progress: what an upload, import, prune or re-embed has done so far, and why anything was skipped.
A job is shown only to the key that started it."""

from __future__ import annotations

from fastapi import APIRouter

from geoloc.search_api.auth import Admin, Svc
from geoloc.search_api.errors import ERROR_RESPONSES, ApiError
from geoloc.search_api.schemas import Job

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=ERROR_RESPONSES)


@router.get("/{job_id}", response_model=Job, responses={404: {"description": "No such job of this key"}},
            summary="A job's state and counts (jobs this key started)")
def get_job(svc: Svc, key: Admin, job_id: str):
    job = svc.jobs.get(job_id)
    if job is None or job.get("owner") != key.id:  # another key's job is not this key's to know of
        raise ApiError(404, "no_job", f"no job {job_id} of key {key.id} (jobs are kept 30 days)")
    return job
