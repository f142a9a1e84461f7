"""The audit log: one whole JSON line per call, owner-readable only, never interleaved across processes."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import threading

from geoloc.audit import AuditLog


def read_entries(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_entries_name_the_key_endpoint_and_collections(tmp_path):
    log = AuditLog(tmp_path / "home" / "audit.jsonl")
    log.record("k1", "locate", ["news"], outcome="answered", photos=2)
    log.record("k2", "similar", None)
    first, second = read_entries(log.path)
    assert first["key"] == "k1" and first["collections"] == ["news"] and first["photos"] == 2
    assert second["endpoint"] == "similar" and second["collections"] == "all" and "time" in second
    assert stat.S_IMODE(log.path.stat().st_mode) == 0o600


def test_processes_appending_at_once_write_whole_lines(tmp_path):
    path = tmp_path / "audit.jsonl"
    script = ("import sys\nfrom geoloc.audit import AuditLog\nlog = AuditLog(sys.argv[1])\n"
              "for i in range(50):\n    log.record(sys.argv[2], 'locate', ['c'], note='x' * 5000, i=i)")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(path), f"k{n}"]) for n in range(4)]
    assert [p.wait(timeout=60) for p in procs] == [0] * 4
    entries = read_entries(path)
    assert len(entries) == 200
    assert all(sorted(e["i"] for e in entries if e["key"] == f"k{n}") == list(range(50)) for n in range(4))


def test_threads_appending_at_once_write_whole_lines(tmp_path):
    """A server's request threads each open the log: the flock keeps their lines apart as it does processes'."""
    log = AuditLog(tmp_path / "audit.jsonl")

    def append(n: int) -> None:
        for i in range(50):
            log.record(f"k{n}", "locate", ["c"], note="x" * 5000, i=i)

    threads = [threading.Thread(target=append, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    entries = read_entries(log.path)
    assert len(entries) == 400 and {e["key"] for e in entries} == {f"k{n}" for n in range(8)}
