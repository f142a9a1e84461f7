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

    @property
    def gallery_dir(self) -> Path:
        return self.home / "gallery"

    @property
    def reports_dir(self) -> Path:
        path = self.home / "reports"
        path.mkdir(parents=True, exist_ok=True)
        return path
