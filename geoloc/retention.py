"""What geoloc keeps, and what goes: deleting a collection everywhere, releasing stored originals, sweeping.

A stored original (ingest.originals) is shared by content across collections and models' stores, so it goes
only once no photo of any store holds its SHA-256 (gallery payloads) and no unfinished job will read it. A
delete removes at once the originals it leaves unneeded; the sweep removes what escaped that (a server
stopped mid-job, a job that failed): files no photo and no unfinished job needs, once they are older than
GEOLOC_SPOOL_MAX_AGE, or sooner, oldest first, while such files weigh more than GEOLOC_SPOOL_MAX_BYTES.
The age bound leaves alone a copy written a moment before its job or its photo is recorded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from geoloc.gallery.base import Gallery, SearchFilter
from geoloc.ingest.originals import OriginalStore
from geoloc.ingest.records import point_id
from geoloc.job_store import JobStore, cancel_collection, needed_originals
from geoloc.settings import Settings

log = logging.getLogger(__name__)

MAX_LOOKUPS = 1024  # ids to look up one by one (each comes with its vector); beyond, read every payload once


def referenced(stores: Sequence[Gallery], digests: Iterable[str]) -> set[str]:
    """Which of these digests a photo of any store holds. A point id is fixed by (collection, digest), so a
    few digests are looked up by id; many, by reading every payload once."""
    wanted, found = set(digests), set()
    for gallery in stores:
        if not wanted - found:
            break
        names = list(gallery.collections())
        if len(names) * len(wanted) <= MAX_LOOKUPS:
            hits = gallery.retrieve([point_id(name, digest) for name in names for digest in wanted])
        else:
            hits = gallery.scroll()
        found |= {hit.payload.get("sha256") for hit in hits} & wanted
    return found


def release(stores: Sequence[Gallery], jobs: JobStore, originals: OriginalStore, digests: Iterable[str],
            but_job: str | None = None) -> int:
    """Remove the stored originals of these digests that no photo holds and no unfinished job (other than
    `but_job`) needs; how many went."""
    candidates = set(digests) - {None} - needed_originals(jobs, but=but_job)
    unneeded = candidates - referenced(stores, candidates)
    return sum(1 for digest in unneeded if originals.remove(digest))


def release_quietly(stores: Callable[[], Sequence[Gallery]], jobs: JobStore, originals: OriginalStore,
                    digests: set[str], but_job: str | None = None) -> None:
    """release(), leaving the files to the sweep when the gallery or the job store cannot say what is needed
    (it runs after the work that matters, and must not hide why that work failed)."""
    if not digests:
        return
    try:
        release(stores(), jobs, originals, digests, but_job)
    except Exception as exc:
        log.warning("stored originals left for the sweep: %s", exc)


def delete_collection(stores: Sequence[Gallery], jobs: JobStore, originals: OriginalStore, name: str) -> int:
    """Cancel the collection's unfinished jobs, delete its photos from every model's store, and remove the
    originals nothing else needs; the photos the collection held. Cancelling comes first: a batch that
    writes after it sees the cancellation and undoes its writes (geoloc.jobs)."""
    cancelled = cancel_collection(jobs, name, f"the collection '{name}' was deleted")
    digests = {digest for job in cancelled for digest in job["originals"]}
    deleted = 0
    for gallery in stores:
        where = SearchFilter(collections=[name])
        digests |= {hit.payload.get("sha256") for hit in gallery.scroll(where)}
        deleted = max(deleted, gallery.delete(where))
    removed = release(stores, jobs, originals, digests)
    log.info("deleted collection %s: %d photos, %d jobs cancelled, %d originals removed", name, deleted,
             len(cancelled), removed)
    return deleted


@dataclass
class Swept:
    removed: int = 0
    freed: int = 0  # bytes
    kept: int = 0
    kept_bytes: int = 0


def sweep(stores: Sequence[Gallery], jobs: JobStore, originals: OriginalStore, max_age_s: float, max_bytes: int,
          now: float | None = None) -> Swept:
    """Remove the spool's files no photo and no unfinished job needs, once older than `max_age_s`, or sooner,
    oldest first, while they weigh more than `max_bytes` together."""
    needed = needed_originals(jobs) | {hit.payload.get("sha256") for gallery in stores for hit in gallery.scroll()}
    now = time.time() if now is None else now
    swept, spare = Swept(), []
    for stored in originals.files():
        if stored.digest in needed:
            swept.kept, swept.kept_bytes = swept.kept + 1, swept.kept_bytes + stored.size
        elif now - stored.mtime > max_age_s:
            swept.removed, swept.freed = swept.removed + 1, swept.freed + originals.discard(stored)
        else:
            spare.append(stored)
    spare_bytes = sum(stored.size for stored in spare)
    for stored in sorted(spare, key=lambda s: s.mtime):
        if spare_bytes <= max_bytes:
            swept.kept, swept.kept_bytes = swept.kept + 1, swept.kept_bytes + stored.size
            continue
        spare_bytes -= stored.size
        swept.removed, swept.freed = swept.removed + 1, swept.freed + originals.discard(stored)
    return swept


def sweep_with(settings: Settings, stores: Callable[[], Sequence[Gallery]], jobs: JobStore) -> Swept:
    """The sweep over the settings' spool and bounds."""
    return sweep(stores(), jobs, OriginalStore(settings.spool_dir), settings.spool_max_age, settings.spool_max_bytes)


def sweep_in_background(settings: Settings, stores: Callable[[], Sequence[Gallery]], jobs: JobStore) -> None:
    """Sweep on a thread of its own (at a server's start). A sweep that cannot learn what is needed (the
    gallery or the job store unreachable) removes nothing."""
    def run() -> None:
        try:
            swept = sweep_with(settings, stores, jobs)
        except Exception as exc:  # the server starts all the same: /readyz says what is wrong
            log.warning("spool not swept (nothing removed): %s", exc)
            return
        log.info("spool swept: %d files removed (%d bytes), %d kept", swept.removed, swept.freed, swept.kept)

    threading.Thread(target=run, name="geoloc-sweep", daemon=True).start()
