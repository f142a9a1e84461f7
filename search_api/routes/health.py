"""Liveness and readiness, for load balancers and orchestrators (no key needed).

The server takes no request before its model is loaded (Services.start), so the `model` check says "ok", or
why the model could not be loaded (then not ready). The gallery and broker checks answer within READY_WITHIN_S
whatever those do: each runs on a thread of its own, and one not done by then reports so (a lock held by another
process, a server that does not answer). The next request waits on the same check rather than starting another.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as Pending

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from geoloc.search_api.auth import Svc
from geoloc.search_api.errors import RETRY_AFTER_S
from geoloc.search_api.schemas import Health

router = APIRouter(tags=["health"])

READY_WITHIN_S = 1.5
_probes_lock = threading.Lock()


class Probe:
    """One check at a time, on a daemon thread (a check stuck for good never holds the process open)."""

    def __init__(self, check: Callable[[], str]):
        self.check = check
        self._running: Future | None = None
        self._lock = threading.Lock()

    def _start(self) -> Future:
        future: Future = Future()

        def run() -> None:
            try:
                future.set_result(self.check())
            except Exception as exc:
                future.set_exception(exc)

        threading.Thread(target=run, name="geoloc-readiness", daemon=True).start()
        return future

    def running(self) -> Future:
        """The check under way, or a new one."""
        with self._lock:
            if self._running is None or self._running.done():
                self._running = self._start()
            return self._running

    @staticmethod
    def outcome(running: Future, timeout: float) -> str:
        try:
            return running.result(timeout=max(0.0, timeout))
        except Pending:
            return (f"unreachable: no answer within {READY_WITHIN_S} s (locked by another process, a server not "
                    f"answering, or still starting)")
        except Exception as exc:
            return f"unreachable: {exc}"


def _probes(request: Request, svc) -> dict[str, Probe]:
    """The app's probes, made on first use."""
    with _probes_lock:
        if not hasattr(request.app.state, "readiness"):
            def gallery() -> str:  # every model's store, without loading a model
                for store in svc.runtime.every_store():
                    store.count()
                return "ok"

            def broker() -> str:
                return "ok" if svc.broker_reachable() else "unreachable"

            request.app.state.readiness = {"gallery": Probe(gallery), "broker": Probe(broker)}
        return request.app.state.readiness


@router.get("/healthz", response_model=Health, summary="The process is up")
def healthz():
    return {"status": "ok", "checks": {}}


@router.get("/readyz", response_model=Health,
            summary="The model is loaded, the gallery and the job queue are reachable",
            responses={503: {"model": Health, "description": "Something it needs is unreachable"}})
def readyz(svc: Svc, request: Request):
    deadline = time.monotonic() + READY_WITHIN_S
    probes = _probes(request, svc)
    names = ["gallery", "broker"] if svc.settings.broker_url else ["gallery"]
    running = {name: probes[name].running() for name in names}  # together: one deadline for all
    checks = {name: Probe.outcome(future, deadline - time.monotonic()) for name, future in running.items()}
    if not svc.settings.broker_url:
        checks["broker"] = "none (jobs run in this process)"
    checks["model"] = svc.model_state  # loaded before the server took its first request, or why not
    ready = all(v == "ok" or v.startswith("none") for v in checks.values())
    return JSONResponse({"status": "ok" if ready else "unavailable", "checks": checks},
                        status_code=200 if ready else 503,
                        headers=None if ready else {"Retry-After": str(RETRY_AFTER_S)})
