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
    # services: with a Redis broker, jobs run on Celery workers; without one, `geoloc serve` runs them itself
    broker_url: str | None = field(default_factory=lambda: os.environ.get("GEOLOC_BROKER_URL"))
    # several processes on one host share the embedded gallery, one operation at a time (see gallery.shared)
    gallery_shared: bool = field(default_factory=lambda: _env_flag("GEOLOC_GALLERY_SHARED"))
    # server-side folders and CSV manifests the API may import from (os.pathsep-separated); none by default
    import_roots: list[Path] = field(default_factory=lambda: [
        Path(p).expanduser().resolve() for p in os.environ.get("GEOLOC_IMPORT_ROOTS", "").split(os.pathsep) if p])
    # API keys: off only for a trusted loopback (every caller is then an admin)
    require_keys: bool = field(default_factory=lambda: os.environ.get("GEOLOC_REQUIRE_KEYS", "1").strip().lower()
                               not in {"0", "false", "no", "off"})
    max_photo_bytes: int = field(default_factory=lambda: int(os.environ.get("GEOLOC_MAX_PHOTO_BYTES", str(20 << 20))))
    max_pixels: int = field(default_factory=lambda: int(os.environ.get("GEOLOC_MAX_PIXELS", "50000000")))
    max_batch_photos: int = field(default_factory=lambda: int(os.environ.get("GEOLOC_MAX_BATCH_PHOTOS", "100")))
    job_batch: int = field(default_factory=lambda: int(os.environ.get("GEOLOC_JOB_BATCH", "64")))  # photos per task
    task_time_limit: int = field(default_factory=lambda: int(os.environ.get("GEOLOC_TASK_TIME_LIMIT", "900")))
    task_retries: int = field(default_factory=lambda: int(os.environ.get("GEOLOC_TASK_RETRIES", "6")))

    @property
    def gallery_dir(self) -> Path:
        return self.home / "gallery"

    @property
    def reports_dir(self) -> Path:
        path = self.home / "reports"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def edge_shared(self) -> bool:
        """Whether the embedded gallery is opened per operation under a file lock (no Qdrant server, and
        asked for, or implied by workers in other processes)."""
        return not self.qdrant_url and (self.gallery_shared or bool(self.broker_url))

    @property
    def spool_dir(self) -> Path:
        """Uploaded originals, content-addressed; shared by the API and the workers."""
        return self.home / "spool"

    @property
    def jobs_dir(self) -> Path:
        return self.home / "jobs"

    @property
    def keys_path(self) -> Path:
        return self.home / "keys.json"

    @property
    def audit_path(self) -> Path:
        return self.home / "audit.jsonl"
