"""Where state lives and the knobs every entry point shares (environment variables override)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

DEFAULT_BACKBONE = "tf_efficientnet_lite0"


def data_home() -> Path:
    """All state (gallery, reports, bundles) under one directory: $GEOLOC_HOME or the user data dir."""
    env = os.environ.get("GEOLOC_HOME")
    home = Path(env).expanduser() if env else Path(platformdirs.user_data_dir("geoloc"))
    home.mkdir(parents=True, exist_ok=True)
    return home


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass
class Settings:
    home: Path = field(default_factory=data_home)
    backbone: str = field(default_factory=lambda: os.environ.get("GEOLOC_BACKBONE", DEFAULT_BACKBONE))
    checkpoint: str | None = field(default_factory=lambda: os.environ.get("GEOLOC_CHECKPOINT"))
    bundle: str | None = field(default_factory=lambda: os.environ.get("GEOLOC_BUNDLE"))
    device: str = field(default_factory=lambda: os.environ.get("GEOLOC_DEVICE", "auto"))
    batch_size: int = field(default_factory=lambda: int(os.environ.get("GEOLOC_BATCH_SIZE", "32")))
    qdrant_url: str | None = field(default_factory=lambda: os.environ.get("GEOLOC_QDRANT_URL"))
    qdrant_api_key: str | None = field(default_factory=lambda: os.environ.get("GEOLOC_QDRANT_API_KEY"))
    # collection options, used when the server collection is created (an existing one keeps its own)
    qdrant_shards: int | None = field(default_factory=lambda: _env_int("GEOLOC_QDRANT_SHARDS"))
    qdrant_replication: int | None = field(default_factory=lambda: _env_int("GEOLOC_QDRANT_REPLICATION"))
    qdrant_on_disk: bool = field(default_factory=lambda: _env_flag("GEOLOC_QDRANT_ON_DISK"))
    qdrant_int8: bool = field(default_factory=lambda: _env_flag("GEOLOC_QDRANT_INT8"))
    qdrant_timeout: int = field(default_factory=lambda: int(os.environ.get("GEOLOC_QDRANT_TIMEOUT", "30")))

    @property
    def gallery_dir(self) -> Path:
        return self.home / "gallery"

    @property
    def reports_dir(self) -> Path:
        path = self.home / "reports"
        path.mkdir(parents=True, exist_ok=True)
        return path
