"""The services: the HTTP API and the Celery workers that run its jobs."""

from __future__ import annotations

import os
import sys

from geoloc.cli.common import MODEL_OPTIONS, UserError, add_command, add_model_options, settings_from


def cmd_serve(args) -> int:
    import uvicorn

    from geoloc.keys import KeyStore
    from geoloc.search_api.app import create_app

    settings = settings_from(args)
    if settings.require_keys and not KeyStore(settings.keys_path).list():
        print("geoloc: no API keys yet: create one with `geoloc keys create --admin`", file=sys.stderr)
    if not settings.broker_url:
        print("geoloc: no broker (GEOLOC_BROKER_URL): jobs run in this process", file=sys.stderr)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level)
    return 0


def cmd_worker(args) -> int:
    if not settings_from(args).broker_url:
        raise UserError("no broker: set GEOLOC_BROKER_URL (e.g. redis://localhost:6379/0); without one, "
                        "`geoloc serve` runs jobs itself")
    # the pool processes build their settings from the environment
    for option in MODEL_OPTIONS:
        if getattr(args, option, None):
            os.environ[f"GEOLOC_{option.upper()}"] = str(getattr(args, option))
    from geoloc.task_queue import QUEUE
    from geoloc.workers.app import app

    app.worker_main(["worker", f"--loglevel={args.log_level}", f"--concurrency={args.concurrency}",
                     "--pool=prefork", f"--hostname=geoloc-{os.getpid()}@%h", f"--queues={QUEUE}"])
    return 0


def register(sub) -> None:
    p = add_command(sub, "serve", cmd_serve, json=False, help="run the HTTP API (and, with no broker, its jobs)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--log-level", default="info")
    add_model_options(p)

    p = add_command(sub, "worker", cmd_worker, json=False,
                    help="run a Celery worker for the API's jobs (needs GEOLOC_BROKER_URL)")
    p.add_argument("--concurrency", type=int, default=1, help="pool processes, each with its own model "
                                                              "(default 1: one per GPU)")
    p.add_argument("--log-level", default="info")
    add_model_options(p)
