"""Liveness and readiness, for load balancers and orchestrators (no key needed)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from geoloc.search_api.auth import Svc
from geoloc.search_api.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is up")
def healthz():
    return {"status": "ok", "checks": {}}


@router.get("/readyz", response_model=Health, summary="The gallery and the job queue are reachable",
            responses={503: {"model": Health, "description": "Something it needs is unreachable"}})
def readyz(svc: Svc):
    checks = {}
    try:
        svc.gallery().count()
        checks["gallery"] = "ok"
    except Exception as exc:
        checks["gallery"] = f"unreachable: {exc}"
    if svc.settings.broker_url:
        try:
            checks["broker"] = "ok" if svc.broker_reachable() else "unreachable"
        except Exception as exc:
            checks["broker"] = f"unreachable: {exc}"
    else:
        checks["broker"] = "none (jobs run in this process)"
    ready = all(v == "ok" or v.startswith("none") for v in checks.values())
    return JSONResponse({"status": "ok" if ready else "unavailable", "checks": checks},
                        status_code=200 if ready else 503)
