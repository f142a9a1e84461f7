"""Building the gallery's vector index (HNSW) of every model's store: `geoloc maintenance index`, and the
API's index job (POST /v1/maintenance/index) through the job runner.

The embedded gallery also builds it on its own after GEOLOC_INDEX_AFTER_UPSERTS upserts, and either way
searches go on while it is built (gallery.edge_index). A Qdrant server indexes in the background by itself:
there a build has nothing to do and returns at once. An embedded store's build also measures how many candidates
its searches must keep to find 0.99 of the exact top 10 (gallery.search_breadth), and its searches keep that many
unless GEOLOC_HNSW_EF says otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from geoloc.gallery.base import Gallery
from geoloc.job_store import Outcome

if TYPE_CHECKING:
    from geoloc.jobs import JobContext

TASK = "geoloc.index_gallery"
ALL_COLLECTIONS = "*"  # an index job concerns every collection; no collection may be named so


def build_indexes(stores: Iterable[Gallery]) -> dict:
    """Build each store's index in turn; how many points each held, how long its build took and, where measured,
    the search breadth it chose (`search`: gallery.search_breadth.Breadth as a dict)."""
    built = []
    for gallery in stores:
        started = time.perf_counter()
        search = gallery.optimize()
        built.append({"points": gallery.count(), "seconds": round(time.perf_counter() - started, 2),
                      **({"search": search} if search else {})})
    return {"stores": built, "points": sum(b["points"] for b in built)}


def index_gallery(ctx: JobContext, job_id: str, batch: int, collection: str) -> None:
    """The index job's one batch: build the index of every store; `done` counts their points, and the job's
    report says what each store's build found."""
    ctx.jobs.mark_started(job_id)
    report = build_indexes(ctx.every_store())
    ctx.jobs.finish(job_id, batch, Outcome(done=report["points"], report=report))
