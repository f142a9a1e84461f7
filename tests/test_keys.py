"""API keys: only hashes are stored, revocation and expiry are immediate, grants and admin scopes are
enforced, the CLI manages them."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from geoloc.cli import main
from geoloc.keys import ACTIVE, ADMIN, EXPIRED, READER, REVOKED, AccessDenied, KeyStore, claimed_id


@pytest.fixture
def store(tmp_path):
    return KeyStore(tmp_path / "keys.json")


def test_token_authenticates_and_only_its_hash_is_stored(store):
    key, token = store.create(READER, ["news"], name="desk")
    assert token.startswith(f"gk_{key.id}_") and len(token) > 50
    assert store.authenticate(token).id == key.id
    stored = store.path.read_text()
    assert token not in stored and token.split("_", 2)[2] not in stored
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert "sha256" not in key.public()


@pytest.mark.parametrize("token", ["", "gk", "gk__", "Bearer x", "gk_unknown_secret"])
def test_malformed_or_unknown_tokens_are_refused(store, token):
    store.create(ADMIN)
    assert store.authenticate(token) is None


def test_a_right_id_with_a_wrong_secret_is_refused(store):
    key, token = store.create(ADMIN)
    assert store.authenticate(f"gk_{key.id}_{'A' * 43}") is None


def test_revocation_takes_effect_for_a_running_reader(store, tmp_path):
    key, token = store.create(ADMIN)
    running = KeyStore(tmp_path / "keys.json")  # e.g. the API process
    assert running.authenticate(token) is not None
    store.revoke(key.id)
    assert running.authenticate(token) is None
    assert store.list()[0].revoked
    with pytest.raises(ValueError, match="no key"):
        store.revoke("nope")


def test_scope_enforces_grants(store):
    admin, _ = store.create(ADMIN)
    reader, _ = store.create(READER, ["news", "archive"])
    assert admin.scope(None) is None and admin.scope(["x"]) == ["x"]
    assert reader.scope(None) == ["news", "archive"]
    assert reader.scope(["archive"]) == ["archive"]
    with pytest.raises(AccessDenied, match="may not search secret; it may search news, archive"):
        reader.scope(["news", "secret"])
    with pytest.raises(AccessDenied, match="admin key"):
        reader.require_admin()
    admin.require_admin()


def test_a_scoped_admin_manages_and_searches_only_its_collections(store):
    scoped, _ = store.create(ADMIN, ["news", "archive", "news"])
    assert scoped.collections == ["news", "archive"] and scoped.is_admin
    scoped.require_admin("news")
    with pytest.raises(AccessDenied, match="manages only news, archive, not secret"):
        scoped.require_admin("secret")
    assert scoped.scope(None) == ["news", "archive"] and scoped.scope(["archive"]) == ["archive"]
    with pytest.raises(AccessDenied, match="may not search secret"):
        scoped.scope(["secret"])
    assert scoped.reaches("news") and not scoped.reaches("secret")
    everything, _ = store.create(ADMIN)
    everything.require_admin("secret")
    assert everything.reaches("secret") and everything.scope(None) is None


def test_roles_grants_expiry_and_quotas_are_validated(store):
    with pytest.raises(ValueError, match="needs the collections"):
        store.create(READER)
    with pytest.raises(ValueError, match="invalid collection name"):
        store.create(READER, ["../x"])
    with pytest.raises(ValueError, match="already past"):
        store.create(ADMIN, expires=datetime.now(timezone.utc) - timedelta(seconds=1))
    with pytest.raises(ValueError, match="at least 1"):
        store.create(ADMIN, photos_per_hour=0)
    assert store.list() == []


def test_an_expired_key_is_identified_but_refused(store):
    key, token = store.create(READER, ["news"], expires=datetime.now(timezone.utc) + timedelta(hours=1))
    assert key.state() == ACTIVE and store.authenticate(token).id == key.id
    later = datetime.now(timezone.utc) + timedelta(hours=2)
    assert key.state(later) == EXPIRED
    naive, _ = store.create(READER, ["news"], expires=datetime.now() + timedelta(days=400))  # naive: UTC
    assert naive.expires.endswith("+00:00")
    gone, gone_token = store.create(READER, ["news"], expires=datetime.now(timezone.utc) + timedelta(seconds=2))
    assert store.authenticate(gone_token) is not None
    time.sleep(2.1)
    assert store.authenticate(gone_token) is None and store.identify(gone_token).state() == EXPIRED
    store.revoke(key.id)
    assert store.identify(token).state() == REVOKED and store.authenticate(token) is None


def test_claimed_id_takes_only_an_id_shaped_part(store):
    key, token = store.create(ADMIN)
    assert claimed_id(token) == key.id and claimed_id(f"gk_{key.id}_wrong") == key.id
    assert claimed_id("gk_NOT-AN-ID_x") is None and claimed_id("secret") is None


def test_concurrent_creations_lose_no_key(store):
    threads = [threading.Thread(target=store.create, args=(ADMIN,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.list()) == 8


def test_concurrent_processes_lose_no_key(store):
    script = ("import sys\nfrom geoloc.keys import KeyStore\n"
              "for _ in range(5):\n    KeyStore(sys.argv[1]).create('admin')")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(store.path)]) for _ in range(4)]
    assert [p.wait(timeout=60) for p in procs] == [0] * 4
    assert len(store.list()) == 20


def test_cli_create_list_revoke(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GEOLOC_HOME", str(tmp_path))
    assert main(["keys", "create", "--reader", "--collections", "news,archive", "--name", "desk"]) == 0
    out = capsys.readouterr()
    token = out.out.strip()
    assert token.startswith("gk_") and "shown only once" in out.err
    key_id = token.split("_")[1]
    assert main(["keys", "list"]) == 0
    listed = capsys.readouterr().out
    assert key_id in listed and "news,archive" in listed and token not in listed
    assert main(["keys", "revoke", key_id]) == 0
    assert KeyStore(tmp_path / "keys.json").authenticate(token) is None
    assert main(["keys", "create", "--reader"]) == 2
    assert "needs the collections" in capsys.readouterr().err


def test_cli_scoped_admin_expiry_and_quotas_show_in_the_list(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GEOLOC_HOME", str(tmp_path))
    monkeypatch.setenv("GEOLOC_KEY_REQUESTS_PER_MINUTE", "90")
    assert main(["keys", "create", "--admin", "--collections", "news,archive", "--expires-in", "30d",
                 "--photos-per-hour", "50", "--name", "desk editor"]) == 0
    out = capsys.readouterr()
    assert "admin key" in out.err and "news, archive" in out.err and "expires 20" in out.err
    scoped_id = out.out.strip().split("_")[1]
    assert main(["keys", "create", "--reader", "--collections", "news", "--expires", "2999-12-31"]) == 0
    reader_id = capsys.readouterr().out.strip().split("_")[1]
    assert main(["keys", "create", "--admin"]) == 0
    everything_id = capsys.readouterr().out.strip().split("_")[1]
    assert main(["keys", "revoke", everything_id]) == 0
    capsys.readouterr()
    assert main(["keys", "list"]) == 0
    rows = {line.split("\t")[0]: line.split("\t") for line in capsys.readouterr().out.splitlines()}
    assert rows["id"][1:7] == ["role", "collections", "created", "expires", "state", "limits"]
    scoped = rows[scoped_id]
    in_30_days = datetime.fromisoformat(scoped[4]) - datetime.now(timezone.utc)
    assert scoped[1:3] == ["admin", "news,archive"] and timedelta(days=29, hours=23) < in_30_days <= timedelta(days=30)
    assert scoped[5:] == ["active", "90 req/min, 50 photos/h", "desk editor"]
    assert rows[reader_id][4] == "3000-01-01T00:00:00+00:00"  # through the last day, UTC
    assert rows[everything_id][2] == "*" and rows[everything_id][4] == "never"
    assert rows[everything_id][5].startswith("revoked ")
    assert main(["keys", "list", "--json"]) == 0
    listed = {k["id"]: k for k in json.loads(capsys.readouterr().out)}
    assert listed[scoped_id]["limits"] == {"requests_per_minute": 90, "photos_per_hour": 50}
    assert listed[everything_id]["state"] == "revoked" and "sha256" not in listed[scoped_id]


@pytest.mark.parametrize("argv, message", [
    (["--expires-in", "30"], "give a number and h, d or w"),
    (["--expires-in=-3d"], "give a number and h, d or w"),
    (["--expires-in", "3 months"], "give a number and h, d or w"),
    (["--expires", "next week"], "give a date"),
    (["--expires", "2001-01-01"], "already past"),
    (["--expires-in", "1d", "--expires", "2999-01-01"], "not allowed with"),
    (["--photos-per-hour", "0"], "at least 1"),
])
def test_cli_refuses_bad_expiry_and_quotas(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.setenv("GEOLOC_HOME", str(tmp_path))
    try:
        status = main(["keys", "create", "--admin", *argv])
    except SystemExit as exc:  # argparse: a bad option value
        status = exc.code
    assert status == 2 and message in capsys.readouterr().err
    assert KeyStore(tmp_path / "keys.json").list() == []
