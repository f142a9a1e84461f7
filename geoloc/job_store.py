"""Job records: what each batch of a job did, summed into the job the API shows, in files or in Redis.

A batch's outcome is written once, the first time it finishes, and a job's progress is the sum of its
batches' outcomes: a task redelivered after a killed worker, or retried, can redo its gallery writes but
never counts twice. `geoloc serve` without a broker keeps jobs as JSON files; with one, in Redis.

A job can be cancelled (its collection was deleted): batches that start afterwards do nothing, and one
running undoes its writes (geoloc.jobs). Each store also knows its unfinished jobs and the stored originals
(by SHA-256) they still need, so that nothing a queued upload will read is removed from under it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

from filelock import FileLock

from geoloc.settings import Settings

MAX_LISTED_ITEMS = 200  # skipped or failed photos a job lists by name (all are counted)
JOB_TTL_S = 30 * 24 * 3600  # how long a broker-side job record is kept


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Outcome:
    """What one batch did. done: photos handled (indexed, examined, re-embedded); removed: deleted."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    removed: int = 0
    reasons: dict = field(default_factory=dict)  # reason -> photos skipped or failed for it
    items: list = field(default_factory=list)  # {"source", "reason"} of skipped or failed photos
    error: str | None = None
    report: dict | None = None  # what an index build found (maintenance_index.build_indexes)
    at: str = field(default_factory=_now)

    def skip(self, source: str, reason: str) -> None:
        self.skipped += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        self.items.append({"source": source, "reason": reason})


def cancelled_outcome(size: int) -> Outcome:
    """What a batch of a cancelled job did: nothing, its photos skipped."""
    return Outcome(skipped=size, reasons={"cancelled": size} if size else {})


def summarise(meta: dict, started: str | None, outcomes: dict[str, dict], cancelled: dict | None = None) -> dict:
    """A job as the API shows it: its metadata plus the sum of its batches' outcomes.

    Batch "0" is what the API itself decided before queueing (duplicates, files too large); batches
    1..n are tasks. The job is finished when every task batch has an outcome, or once it is cancelled.
    """
    totals = Counter()
    reasons: Counter = Counter()
    items: list = []
    errors = []
    report = None
    for key in sorted(outcomes, key=int):
        outcome = outcomes[key]
        report = outcome.get("report") or report
        totals.update({k: outcome[k] for k in ("done", "skipped", "failed", "removed")})
        reasons.update(outcome["reasons"])
        items.extend(outcome["items"][: MAX_LISTED_ITEMS - len(items)])
        if outcome.get("error"):
            errors.append(outcome["error"])
    batches_done = sum(1 for key in outcomes if key != "0")
    finished = batches_done >= meta["batches"]
    ended = max((o["at"] for o in outcomes.values()), default=meta["created"]) if finished else None
    if cancelled is not None:
        state, ended = "cancelled", cancelled["at"]
        errors.insert(0, cancelled["reason"])
    elif finished:
        state = "failed" if errors or totals["failed"] else "succeeded"
    else:
        state = "running" if started or batches_done else "queued"
    return {**meta, "state": state, "started": started, "finished": ended,
            "done": totals["done"], "skipped": totals["skipped"], "failed": totals["failed"],
            "removed": totals["removed"], "reasons": dict(reasons), "items": items,
            "error": errors[0] if errors else None, "batches_done": batches_done, "report": report}


class JobStore(Protocol):
    def create(self, kind: str, collection: str, total: int, batches: int, owner: str,
               pre: Outcome | None = None, originals: list[str] | None = None) -> str:
        """A new job; `originals`: SHA-256 of the stored originals it will read (an upload's photos)."""

    def get(self, job_id: str) -> dict | None: ...

    def mark_started(self, job_id: str) -> None: ...

    def finished_batches(self, job_id: str) -> set[int]: ...

    def finish(self, job_id: str, batch: int, outcome: Outcome) -> bool:
        """Record a batch's outcome unless one is recorded already; True if this call recorded it."""

    def cancel(self, job_id: str, reason: str) -> bool:
        """Cancel an unfinished job; True if this call cancelled it."""

    def is_cancelled(self, job_id: str) -> bool: ...

    def unfinished(self) -> list[dict]:
        """Every job neither finished nor cancelled, each with the `originals` it needs."""

    def owned(self, owner: str, limit: int, offset: int) -> tuple[list[dict], int]:
        """(a page of the jobs `owner` started, newest first; how many it has in all)."""


def cancel_collection(store: JobStore, collection: str, reason: str) -> list[dict]:
    """Cancel every unfinished job of a collection; those jobs, as they were."""
    jobs = [job for job in store.unfinished() if job["collection"] == collection]
    return [job for job in jobs if store.cancel(job["id"], reason)]


def needed_originals(store: JobStore, but: str | None = None) -> set[str]:
    """The stored originals unfinished jobs (other than `but`) still need."""
    return {digest for job in store.unfinished() if job["id"] != but for digest in job["originals"]}


def _meta(kind: str, collection: str, total: int, batches: int, owner: str) -> dict:
    return {"id": str(uuid.uuid4()), "kind": kind, "collection": collection, "total": total,
            "batches": batches, "owner": owner, "created": _now()}


class FileJobStore:
    """Jobs as JSON files under the data home: the store of `geoloc serve` without a broker. An empty file
    under `open/` names each unfinished job, so finding them never reads every job ever run."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self._open = self.directory / "open"
        self._open.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(self.directory / ".lock")  # one writer at a time, across threads and processes

    def _path(self, job_id: str) -> Path:
        return self.directory / f"{uuid.UUID(job_id)}.json"  # a job id is a UUID, never a path

    def _load(self, job_id: str) -> dict | None:
        try:
            return json.loads(self._path(job_id).read_text())
        except (ValueError, FileNotFoundError):
            return None

    def _save(self, record: dict) -> None:
        path = self._path(record["meta"]["id"])
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(path)

    @staticmethod
    def _summary(record: dict) -> dict:
        return summarise(record["meta"], record["started"], record["outcomes"], record.get("cancelled"))

    def create(self, kind, collection, total, batches, owner, pre=None, originals=None) -> str:
        meta = _meta(kind, collection, total, batches, owner)
        with self._lock:
            (self._open / meta["id"]).touch()
            self._save({"meta": meta, "started": None, "outcomes": {"0": asdict(pre)} if pre else {},
                        "originals": list(originals or []), "cancelled": None, "order": time.time_ns()})
        return meta["id"]

    def get(self, job_id):
        record = self._load(job_id)
        return None if record is None else self._summary(record)

    def mark_started(self, job_id):
        with self._lock:
            record = self._load(job_id)
            if record is not None and not record["started"]:
                record["started"] = _now()
                self._save(record)

    def finish(self, job_id, batch, outcome) -> bool:
        with self._lock:
            record = self._load(job_id)
            if record is None or str(batch) in record["outcomes"]:
                return False
            record["outcomes"][str(batch)] = asdict(outcome)
            self._save(record)
            if self._summary(record)["finished"]:
                (self._open / record["meta"]["id"]).unlink(missing_ok=True)
            return True

    def cancel(self, job_id, reason) -> bool:
        with self._lock:
            record = self._load(job_id)
            if record is None or self._summary(record)["finished"]:
                return False
            record["cancelled"] = {"at": _now(), "reason": reason}
            self._save(record)
            (self._open / record["meta"]["id"]).unlink(missing_ok=True)
            return True

    def is_cancelled(self, job_id) -> bool:
        record = self._load(job_id)
        return bool(record and record.get("cancelled"))

    def finished_batches(self, job_id) -> set[int]:
        return {int(batch) for batch in (self._load(job_id) or {"outcomes": {}})["outcomes"]}

    def unfinished(self) -> list[dict]:
        jobs = []
        for marker in self._open.iterdir():
            record = self._load(marker.name) if _is_uuid(marker.name) else None
            if record is not None and not self._summary(record)["finished"]:
                jobs.append({**self._summary(record), "originals": record.get("originals", [])})
        return jobs

    def owned(self, owner, limit, offset) -> tuple[list[dict], int]:
        records = [r for r in map(self._load, (p.stem for p in self.directory.glob("*.json")))
                   if r is not None and r["meta"]["owner"] == owner]
        records.sort(key=lambda r: (r["meta"]["created"], r.get("order", 0)), reverse=True)
        return [self._summary(r) for r in records[offset:offset + limit]], len(records)

    def interrupt_unfinished(self, reason: str) -> int:
        """Fail every job left unfinished by a stopped server: its thread, and its queue, are gone."""
        count = 0
        with self._lock:
            for path in self.directory.glob("*.json"):
                record = json.loads(path.read_text())
                meta, outcomes = record["meta"], record["outcomes"]
                missing = [b for b in range(1, meta["batches"] + 1) if str(b) not in outcomes]
                for b in missing:
                    outcomes[str(b)] = asdict(Outcome(error=reason))
                if missing and not record.get("cancelled"):
                    self._save(record)
                    count += 1
                (self._open / meta["id"]).unlink(missing_ok=True)
        return count


def _is_uuid(name: str) -> bool:
    try:
        return str(uuid.UUID(name)) == name
    except ValueError:
        return False


class RedisJobStore:
    """Jobs in Redis (the broker), where workers on any machine record progress; a set names the unfinished
    ones. The client must decode responses."""

    OPEN = "geoloc:jobs:open"
    OWNED = "geoloc:jobs:owner:{}"  # a sorted set per key: its jobs' ids, scored by creation time

    def __init__(self, client):
        self.redis = client

    @staticmethod
    def _keys(job_id: str) -> tuple[str, str]:
        return f"geoloc:job:{job_id}", f"geoloc:job:{job_id}:batches"

    def create(self, kind, collection, total, batches, owner, pre=None, originals=None) -> str:
        meta = _meta(kind, collection, total, batches, owner)
        job_key, batches_key = self._keys(meta["id"])
        with self.redis.pipeline() as pipe:
            pipe.hset(job_key, mapping={"meta": json.dumps(meta), "originals": json.dumps(list(originals or []))})
            pipe.expire(job_key, JOB_TTL_S).sadd(self.OPEN, meta["id"])
            owned = self.OWNED.format(owner)
            pipe.zadd(owned, {meta["id"]: time.time()}).expire(owned, JOB_TTL_S)
            if pre is not None:
                pipe.hset(batches_key, "0", json.dumps(asdict(pre))).expire(batches_key, JOB_TTL_S)
            pipe.execute()
        return meta["id"]

    def _record(self, job_id: str) -> tuple[dict, dict | None]:
        job_key, batches_key = self._keys(job_id)
        with self.redis.pipeline() as pipe:
            record, outcomes = pipe.hgetall(job_key).hgetall(batches_key).execute()
        if not record:
            return record, None
        cancelled = json.loads(record["cancelled"]) if record.get("cancelled") else None
        return record, summarise(json.loads(record["meta"]), record.get("started"),
                                 {k: json.loads(v) for k, v in outcomes.items()}, cancelled)

    def get(self, job_id):
        return self._record(job_id)[1]

    def mark_started(self, job_id):
        self.redis.hsetnx(self._keys(job_id)[0], "started", _now())

    def finish(self, job_id, batch, outcome) -> bool:
        _, batches_key = self._keys(job_id)
        recorded = bool(self.redis.hsetnx(batches_key, str(batch), json.dumps(asdict(outcome))))
        self.redis.expire(batches_key, JOB_TTL_S)
        if recorded and ((self.get(job_id) or {}).get("finished")):
            self.redis.srem(self.OPEN, job_id)
        return recorded

    def finished_batches(self, job_id):
        return {int(batch) for batch in self.redis.hkeys(self._keys(job_id)[1])}

    def cancel(self, job_id, reason) -> bool:
        job = self.get(job_id)
        if job is None or job["finished"]:
            return False
        cancelled = self.redis.hsetnx(self._keys(job_id)[0], "cancelled", json.dumps({"at": _now(), "reason": reason}))
        self.redis.srem(self.OPEN, job_id)
        return bool(cancelled)

    def is_cancelled(self, job_id) -> bool:
        return bool(self.redis.hexists(self._keys(job_id)[0], "cancelled"))

    def unfinished(self) -> list[dict]:
        jobs = []
        for job_id in self.redis.smembers(self.OPEN):
            record, job = self._record(job_id)
            if job is None or job["finished"]:  # expired, or finished without being told
                self.redis.srem(self.OPEN, job_id)
            else:
                jobs.append({**job, "originals": json.loads(record.get("originals") or "[]")})
        return jobs

    def owned(self, owner, limit, offset) -> tuple[list[dict], int]:
        owned = self.OWNED.format(owner)
        self.redis.zremrangebyscore(owned, "-inf", time.time() - JOB_TTL_S)  # their records have expired
        jobs = [job for job in map(self.get, self.redis.zrevrange(owned, offset, offset + limit - 1)) if job]
        return jobs, self.redis.zcard(owned)


def open_job_store(settings: Settings):
    if settings.broker_url:
        import redis

        return RedisJobStore(redis.Redis.from_url(settings.broker_url, decode_responses=True))
    return FileJobStore(settings.jobs_dir)
