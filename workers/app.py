"""The worker side's Celery app, configured once from the environment (see geoloc.task_queue)."""

from __future__ import annotations

from geoloc.settings import Settings
from geoloc.task_queue import make_celery

app = make_celery(Settings())
