"""The audit log: one whole JSON line per call, owner-readable only, never interleaved across processes."""

from __future__ import annotations

import json
import stat
import subprocess
import sys

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
