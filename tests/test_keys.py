"""API keys: only hashes are stored, revocation is immediate, grants are enforced, the CLI manages them."""

from __future__ import annotations

import stat
import subprocess
import sys
import threading

import pytest

from geoloc.cli import main
from geoloc.keys import ADMIN, READER, AccessDenied, KeyStore


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


def test_roles_and_grants_are_validated(store):
    with pytest.raises(ValueError, match="needs the collections"):
        store.create(READER)
    with pytest.raises(ValueError, match="every collection"):
        store.create(ADMIN, ["news"])
    with pytest.raises(ValueError, match="invalid collection name"):
        store.create(READER, ["../x"])


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
