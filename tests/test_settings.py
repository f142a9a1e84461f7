"""Settings: defaults, environment overrides, and one-line errors naming the variable for every bad value."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from geoloc.cli import main
from geoloc.settings import DEFAULT_BACKBONE, Settings, SettingsError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No GEOLOC_* variable of the machine leaks in; the data home is a fresh folder."""
    for name in list(os.environ):
        if name.upper().startswith("GEOLOC_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("GEOLOC_HOME", str(tmp_path / "home"))


def test_defaults(tmp_path):
    s = Settings()
    assert s.home == tmp_path / "home" and s.home.is_dir()
    assert (s.backbone, s.device, s.batch_size) == (DEFAULT_BACKBONE, "auto", 32)
    assert s.checkpoint is s.bundle is s.qdrant_url is s.qdrant_api_key is s.broker_url is None
    assert s.qdrant_shards is s.qdrant_replication is None and s.qdrant_timeout == 30
    assert not (s.qdrant_on_disk or s.qdrant_int8 or s.gallery_shared) and s.require_keys
    assert s.import_roots == []
    assert (s.max_photo_bytes, s.max_pixels, s.max_batch_photos) == (20 << 20, 50_000_000, 100)
    assert (s.job_batch, s.task_time_limit, s.task_retries) == (64, 900, 6)
    assert s.gallery_dir == s.home / "gallery" and s.spool_dir == s.home / "spool" and s.jobs_dir == s.home / "jobs"
    assert s.keys_path == s.home / "keys.json" and s.audit_path == s.home / "audit.jsonl"
    assert s.reports_dir.is_dir() and not s.edge_shared


def test_home_defaults_to_the_user_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("GEOLOC_HOME", "")  # empty is unset
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert Settings().home == tmp_path / "xdg" / "geoloc" and (tmp_path / "xdg" / "geoloc").is_dir()


def test_environment_overrides_and_empty_means_unset(monkeypatch):
    monkeypatch.setenv("GEOLOC_BATCH_SIZE", "8")
    monkeypatch.setenv("GEOLOC_QDRANT_SHARDS", "3")
    monkeypatch.setenv("GEOLOC_DEVICE", "cpu")
    monkeypatch.setenv("GEOLOC_BROKER_URL", "redis://localhost:6379/0")
    monkeypatch.setenv("GEOLOC_MAX_PIXELS", "")
    monkeypatch.setenv("GEOLOC_CHECKPOINT", "")
    s = Settings()
    assert (s.batch_size, s.qdrant_shards, s.device, s.max_pixels, s.checkpoint) == (8, 3, "cpu", 50_000_000, None)
    assert not s.edge_shared  # workers send their gallery operations to the API (GEOLOC_GALLERY_VIA_API)
    assert Settings(broker_url=None, batch_size=2).broker_url is None  # keywords win over the environment


@pytest.mark.parametrize("word, value", [("1", True), ("true", True), ("Yes", True), (" ON ", True),
                                         ("0", False), ("false", False), ("NO", False), ("off", False)])
def test_flags(monkeypatch, word, value):
    monkeypatch.setenv("GEOLOC_REQUIRE_KEYS", word)
    monkeypatch.setenv("GEOLOC_GALLERY_SHARED", word)
    s = Settings()
    assert s.require_keys is value and s.gallery_shared is value


def test_import_roots_are_split_and_resolved(monkeypatch, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b.csv").write_text("path\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GEOLOC_IMPORT_ROOTS", os.pathsep.join(["a", "", str(tmp_path / "b.csv")]))
    assert Settings().import_roots == [tmp_path / "a", tmp_path / "b.csv"]
    assert Settings(import_roots=[Path("a")]).import_roots == [tmp_path / "a"]


@pytest.mark.parametrize("name, value, problem", [
    ("GEOLOC_BATCH_SIZE", "abc", "not a valid integer"),
    ("GEOLOC_MAX_PIXELS", "1.5", "not a valid integer"),
    ("GEOLOC_JOB_BATCH", "0", "must be at least 1"),
    ("GEOLOC_QDRANT_REPLICATION", "-2", "must be at least 1"),
    ("GEOLOC_TASK_RETRIES", "-1", "must be at least 0"),
    ("GEOLOC_QDRANT_INT8", "maybe", "not a flag: use 1/true/yes/on or 0/false/no/off"),
    ("GEOLOC_REQUIRE_KEYS", "2", "not a flag: use 1/true/yes/on or 0/false/no/off"),
])
def test_a_bad_value_is_one_line_naming_the_variable(monkeypatch, name, value, problem):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        Settings()
    assert str(caught.value) == f"{name}={value!r}: {problem}"
    assert isinstance(caught.value, ValueError)


def test_a_missing_import_root_is_named(monkeypatch, tmp_path):
    value = os.pathsep.join([str(tmp_path), str(tmp_path / "nope")])
    monkeypatch.setenv("GEOLOC_IMPORT_ROOTS", value)
    with pytest.raises(SettingsError) as caught:
        Settings()
    assert str(caught.value) == f"GEOLOC_IMPORT_ROOTS={value!r}: no such file or folder: {tmp_path / 'nope'}"


def test_a_home_that_cannot_be_created_is_named(monkeypatch, tmp_path):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("GEOLOC_HOME", str(tmp_path / "file" / "home"))
    with pytest.raises(SettingsError, match=r"^GEOLOC_HOME='.*/file/home': cannot create .*: Not a directory$"):
        Settings()


def test_several_bad_values_still_make_one_line(monkeypatch):
    monkeypatch.setenv("GEOLOC_BATCH_SIZE", "x")
    monkeypatch.setenv("GEOLOC_QDRANT_ON_DISK", "y")
    message = str(pytest.raises(SettingsError, Settings).value)
    assert "\n" not in message and "GEOLOC_BATCH_SIZE='x'" in message and "GEOLOC_QDRANT_ON_DISK='y'" in message


def test_bad_keywords_are_named_as_keywords():
    with pytest.raises(SettingsError, match=r"^batch_size='abc': not a valid integer$"):
        Settings(batch_size="abc")


def test_assignment_after_construction():
    s = Settings()
    s.device, s.batch_size, s.broker_url = "cpu", 128, "redis://localhost:6379/0"
    assert (s.device, s.batch_size, s.broker_url) == ("cpu", 128, "redis://localhost:6379/0")
    with pytest.raises(SettingsError, match=r"^batch_size=0: must be at least 1$"):
        s.batch_size = 0


def test_the_cli_reports_a_bad_value_in_one_line(monkeypatch, capsys):
    monkeypatch.setenv("GEOLOC_BATCH_SIZE", "abc")
    assert main(["keys", "list"]) == 2
    assert capsys.readouterr().err == "geoloc: error: GEOLOC_BATCH_SIZE='abc': not a valid integer\n"
