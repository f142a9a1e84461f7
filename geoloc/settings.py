"""Where state lives and the knobs every entry point shares: each field reads $GEOLOC_<FIELD> when set.

A bad value stops every entry point with one line naming the variable and the problem
(`GEOLOC_BATCH_SIZE='abc': not a valid integer`); an empty variable counts as unset.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import platformdirs
from pydantic import BeforeValidator, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_BACKBONE = "tf_efficientnet_lite0"
ENV_PREFIX = "GEOLOC_"
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


class SettingsError(ValueError):
    """A setting with a bad value; the message is one line naming the variable and the problem."""


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in _TRUE | _FALSE:
        return word in _TRUE
    raise ValueError("not a flag: use 1/true/yes/on or 0/false/no/off")


Flag = Annotated[bool, BeforeValidator(_flag)]
Count = Annotated[int, Field(ge=1)]  # a size, limit or count where zero makes no sense
Seconds = Annotated[float, Field(gt=0)]


class GalleryTuning(BaseSettings):
    """The gallery's search and index knobs, part of Settings (every entry point checks them) and handed to
    the gallery by gallery.open; a gallery built directly, without settings, reads them from the environment."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True)

    # candidates an HNSW search keeps. Unset: on the embedded gallery, the fewest that found 0.99 of the exact
    # top 10 when its index was last built (gallery.search_breadth), else gallery.base.DEFAULT_HNSW_EF (512:
    # 0.995 at 100,000 photos in 6 ms; a million needs 2048: README "The gallery at scale"); cells below
    # gallery.base.FULL_SCAN_KB are scanned whole
    hnsw_ef: Count | None = None
    # the graph a new gallery store builds (a store keeps the graph it was made with): links per photo and
    # candidates while linking; Qdrant's defaults. Denser graphs find more of the exact top 10 at a million
    # photos, at a longer build and more memory (README "Speed", bench/gallery_scale.py --m --ef-construct)
    hnsw_m: Count = 16
    hnsw_ef_construct: Annotated[int, Field(ge=4)] = 100
    # the vectors a new embedded gallery store keeps in RAM (a store keeps the layout it was made with): float32;
    # int8 (scalar) or turbo4 (TurboQuant, 4 bits a dimension) copies, searched first and rescored with the float32
    # originals kept on disk: less memory and faster searches (README "Speed"; a Qdrant server: GEOLOC_QDRANT_INT8)
    edge_quantization: Literal["float32", "int8", "turbo4"] = "float32"
    # rebuild the embedded gallery's vector index (in the background) after this many upserted photos; 0: never
    index_after_upserts: Annotated[int, Field(ge=0)] = 20_000


class Settings(GalleryTuning):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, validate_assignment=True)

    # all state (gallery, reports, bundles, keys, jobs) lives under one directory, created on first use
    home: Path = Field(default_factory=lambda: Path(platformdirs.user_data_dir("geoloc")))
    backbone: str = DEFAULT_BACKBONE
    checkpoint: str | None = None
    bundle: str | None = None
    device: str = "auto"
    batch_size: Count = 32
    # on a CPU, a timm encoder's second forward pass on runs as one frozen TorchScript graph (models/tracing.py)
    trace_model: Flag = True
    qdrant_url: str | None = None
    qdrant_api_key: str | None = None
    # collection options, used when the server collection is created (an existing one keeps its own)
    qdrant_shards: Count | None = None
    qdrant_replication: Count | None = None
    qdrant_on_disk: Flag = False
    qdrant_int8: Flag = False
    qdrant_timeout: Count = 30
    # services: with a Redis broker, jobs run on Celery workers; without one, `geoloc serve` runs them itself
    broker_url: str | None = None
    # the embedded gallery admits one process: the API holds it open, and workers and commands sharing its data
    # home send their gallery operations to it (over the socket <home>/gallery.sock), presenting internal_token
    gallery_via_api: Flag = False
    # the secret that the API and the processes beside it share (gallery/lending.py); unset on the API: it lends
    # its gallery to none
    internal_token: str | None = Field(default=None, repr=False)
    # with no API to hold it, processes take turns on the embedded gallery, one operation at a time (gallery.shared)
    gallery_shared: Flag = False
    # server-side folders and CSV manifests the API may import from (os.pathsep-separated); none by default
    import_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    # browser origins (scheme://host[:port], or *) whose pages may call the API, comma-separated; none by default
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # API keys: off only for a trusted loopback (every caller is then an admin)
    require_keys: Flag = True
    # per-key quotas (429 beyond them), shared by API processes through the broker's Redis when there is one;
    # a key may carry its own (geoloc keys create --requests-per-minute, --photos-per-hour)
    key_requests_per_minute: Count = 600
    key_photos_per_hour: Count = 6000  # photos sent: to locate, to search with, to add
    max_photo_bytes: Count = 20 << 20
    max_pixels: Count = 50_000_000
    max_batch_photos: Count = 100
    job_batch: Count = 64  # photos per task
    task_time_limit: Count = 900  # seconds
    task_retries: Annotated[int, Field(ge=0)] = 6
    task_retry_delay: Seconds = 1.0  # before a batch's first retry; doubles with each retry
    # longest wait for a lock of the embedded gallery held by another process, before giving up (503, retry)
    gallery_lock_timeout: Seconds = 5.0
    # geoloc's copies of photos (spool) that no photo and no unfinished job needs go once older than this many
    # seconds, and sooner, oldest first, while together they weigh more than spool_max_bytes
    spool_max_age: Count = 3600
    spool_max_bytes: Count = 1 << 30
    # torch CPU threads, set once when a server starts; default: OMP_NUM_THREADS when set, else the cores
    torch_threads: Count = Field(default_factory=lambda: _default_threads())
    # the API runs photos of concurrent locate/similar requests through the encoder together: at most this many
    # at once, waiting at most this long for more once several requests are seen to arrive together
    serve_batch_photos: Count = 8
    serve_batch_wait_ms: Annotated[float, Field(ge=0)] = 5.0
    # forward passes the API runs side by side, each on torch_threads // serve_lanes threads: on 2 cores, two
    # one-thread passes answer more than one two-thread pass, which stalls whenever a request thread takes a core
    serve_lanes: Count = 2

    def __init__(self, **values: Any):
        if os.environ.get(ENV_PREFIX + "EDGE_INT8", "").strip():  # renamed: ignored, it would make float32 stores
            raise SettingsError(f"{ENV_PREFIX}EDGE_INT8 is replaced by {ENV_PREFIX}EDGE_QUANTIZATION=int8 (or turbo4)")
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise SettingsError(_describe(exc, given=set(values))) from None

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            raise SettingsError(_describe(exc, given={name})) from None

    @field_validator("home")
    @classmethod
    def _create_home(cls, home: Path) -> Path:
        home = home.expanduser()
        try:
            home.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"cannot create {home}: {exc.strerror}") from None
        return home

    @field_validator("import_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: Any) -> Any:
        return [part for part in value.split(os.pathsep) if part.strip()] if isinstance(value, str) else value

    @field_validator("import_roots")
    @classmethod
    def _resolve_roots(cls, roots: list[Path]) -> list[Path]:
        resolved = [root.expanduser().resolve() for root in roots]
        missing = [str(root) for root in resolved if not root.exists()]
        if missing:
            raise ValueError(f"no such file or folder: {', '.join(missing)}")
        return resolved

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value

    @field_validator("cors_origins")
    @classmethod
    def _check_origins(cls, origins: list[str]) -> list[str]:
        bad = [o for o in origins if o != "*" and not re.fullmatch(r"https?://[^/\s:]+(:\d{1,5})?", o)]
        if bad:
            raise ValueError(f"not an origin (scheme://host[:port], no path, or *): {', '.join(bad)}")
        return origins

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
        """Whether the embedded gallery is opened per operation under a file lock: asked for, with no Qdrant
        server and no API holding it (gallery_via_api)."""
        return self.gallery_shared and not self.qdrant_url and not self.gallery_via_api

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


def _default_threads() -> int:
    """OMP_NUM_THREADS when set (what torch itself would use), else the cores this process may run on."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _problem(error: dict) -> str:
    kind, ctx = error["type"], error.get("ctx", {})
    if kind == "value_error":
        return str(ctx["error"])
    if kind == "greater_than_equal":
        return f"must be at least {ctx['ge']}"
    if kind in ("int_parsing", "int_type"):
        return "not a valid integer"
    return error["msg"][0].lower() + error["msg"][1:]


def _describe(exc: ValidationError, given: set[str]) -> str:
    """One line per bad field, joined: `GEOLOC_<FIELD>=<value>: <problem>` for a value read from the
    environment, `<field>=<value>: <problem>` for one passed in code."""
    described: dict[str, str] = {}
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else "settings"
        if field in described:
            continue
        name = field if field in given else ENV_PREFIX + field.upper()
        value = error["input"] if field in given else os.environ.get(name, error["input"])
        described[field] = f"{name}={value!r}: {_problem(error)}"
    return "; ".join(described.values())
