"""Job progress: what an upload, import, prune or re-embed has done so far, and why anything was skipped.
A job is shown, and listed, only to the key that started it."""

from __future__ import annotations

from fastapi import APIRouter

from geoloc.search_api.auth import Admin, Svc
from geoloc.search_api.errors import ERROR_RESPONSES, ApiError, documented
from geoloc.search_api.schemas import Job, JobPage, Limit, Offset

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=ERROR_RESPONSES)


@router.get("", response_model=JobPage, summary="The jobs this key started, newest first")
def list_jobs(svc: Svc, key: Admin, limit: Limit = 50, offset: Offset = 0):
    items, total = svc.jobs.store.owned(key.id, limit, offset)
    return {"items": items, "total": total, "limit": limit, "offset": offset}


@router.get("/{job_id}", response_model=Job, responses={404: documented(404, "No such job of this key", "no_job",
                                                 "no job 5d1c of key 3f2a9c1b0d4e (jobs are kept 30 days)")},
            summary="A job's state and counts (jobs this key started)")
def get_job(svc: Svc, key: Admin, job_id: str):
    job = svc.jobs.get(job_id)
    if job is None or job.get("owner") != key.id:  # another key's job is not this key's to know of
        raise ApiError(404, "no_job", f"no job {job_id} of key {key.id} (jobs are kept 30 days)")
    return job
