"""API keys: admin keys manage collections (every one, or only those they are scoped to); reader keys
locate and search only the collections granted. A key may expire, and may carry its own quotas.

A key is shown once, when it is created: `gk_<id>_<secret>`, the secret 256 random bits. Only the
SHA-256 of the whole token is stored (a token that random has nothing to brute-force, so a slow hash
would add cost without adding safety), in `keys.json` under the data home. Writes are atomic and made
under a file lock, so two commands run at once cannot lose a key; readers pick changes up on the next
request, so a revoked key stops working without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock

from geoloc.names import check_collection_name

ADMIN, READER = "admin", "reader"
ACTIVE, REVOKED, EXPIRED = "active", "revoked", "expired"
TOKEN_PREFIX = "gk"


class AccessDenied(PermissionError):
    """The key exists but may not do this; the message says what it may do."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _utc(moment: datetime) -> datetime:
    """A naive time is read as UTC."""
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class ApiKey:
    id: str
    role: str
    # readers: the collections they may search; admins: those they manage (none: every collection)
    collections: list[str] = field(default_factory=list)
    name: str = ""
    created: str = field(default_factory=_now)
    revoked: str | None = None
    expires: str | None = None  # from then on the key is refused
    requests_per_minute: int | None = None  # this key's quotas; None: the server's (GEOLOC_KEY_...)
    photos_per_hour: int | None = None
    sha256: str = field(default="", repr=False)

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN

    def state(self, now: datetime | None = None) -> str:
        if self.revoked:
            return REVOKED
        if self.expires and datetime.fromisoformat(self.expires) <= (now or datetime.now(timezone.utc)):
            return EXPIRED
        return ACTIVE

    def public(self) -> dict:
        """Everything but the hash."""
        return {k: v for k, v in asdict(self).items() if k != "sha256"}

    def reaches(self, collection: str) -> bool:
        return (self.is_admin and not self.collections) or collection in self.collections

    def scope(self, requested: list[str] | None) -> list[str] | None:
        """The collections a search with this key may cover: those requested, all granted when none are
        (None: every collection, for an unscoped admin). Asking for one not granted is refused, never narrowed."""
        if self.is_admin and not self.collections:
            return requested or None
        if not self.collections:
            raise AccessDenied(f"key {self.id} is granted no collections: ask an admin to grant some")
        if not requested:
            return list(self.collections)
        refused = [c for c in requested if not self.reaches(c)]
        if refused:
            raise AccessDenied(f"key {self.id} may not search {', '.join(refused)}; "
                               f"it may search {', '.join(self.collections)}")
        return list(requested)

    def require_admin(self, collection: str | None = None) -> None:
        """An admin key, and one that manages `collection` when one is named."""
        if not self.is_admin:
            raise AccessDenied(f"key {self.id} is a reader key: this needs an admin key")
        if collection is not None and not self.reaches(collection):
            raise AccessDenied(f"key {self.id} manages only {', '.join(self.collections)}, not {collection}")


class KeyStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = FileLock(self.path.with_suffix(".lock"))
        self._cache: tuple[tuple[int, int], dict[str, ApiKey]] | None = None

    def _read(self) -> dict[str, ApiKey]:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return {}
        stamp = (stat.st_mtime_ns, stat.st_size)
        if self._cache is None or self._cache[0] != stamp:
            raw = json.loads(self.path.read_text() or "{}")
            self._cache = (stamp, {k["id"]: ApiKey(**k) for k in raw.get("keys", [])})
        return self._cache[1]

    @contextmanager
    def _writing(self):
        """The keys, under an exclusive lock; saved atomically (owner-readable only) when the block ends."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._cache = None
            keys = dict(self._read())
            yield keys
            tmp = self.path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                json.dump({"keys": [asdict(k) for k in keys.values()]}, out, indent=2)
            os.replace(tmp, self.path)

    def create(self, role: str, collections: list[str] | None = None, name: str = "",
               expires: datetime | None = None, requests_per_minute: int | None = None,
               photos_per_hour: int | None = None) -> tuple[ApiKey, str]:
        """A new key and its token (shown once: only its hash is kept). An admin key given collections
        manages only those; `expires` (naive: UTC) must lie ahead."""
        if role not in (ADMIN, READER):
            raise ValueError(f"role must be '{ADMIN}' or '{READER}', not {role!r}")
        collections = list(dict.fromkeys(check_collection_name(c) for c in (collections or [])))
        if role == READER and not collections:
            raise ValueError("a reader key needs the collections it may search (--collections a,b)")
        if expires is not None:
            expires = _utc(expires).replace(microsecond=0)  # as stored
            if expires <= datetime.now(timezone.utc):
                raise ValueError(f"the expiry {expires.isoformat(timespec='seconds')} is already past")
        for quota in (requests_per_minute, photos_per_hour):
            if quota is not None and quota < 1:
                raise ValueError(f"a quota must be at least 1, not {quota}")
        key_id = secrets.token_hex(6)
        token = f"{TOKEN_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
        key = ApiKey(key_id, role, collections, name,
                     expires=expires and expires.isoformat(timespec="seconds"),
                     requests_per_minute=requests_per_minute, photos_per_hour=photos_per_hour,
                     sha256=_digest(token))
        with self._writing() as keys:
            keys[key_id] = key
        return key, token

    def list(self) -> list[ApiKey]:
        return sorted(self._read().values(), key=lambda k: k.created)

    def revoke(self, key_id: str) -> ApiKey:
        with self._writing() as keys:
            if key_id not in keys:
                raise ValueError(f"no key with id {key_id!r} (see `geoloc keys list`)")
            key = keys[key_id]
            key.revoked = key.revoked or _now()
        return key

    def identify(self, token: str) -> ApiKey | None:
        """The key this token proves, live or not (revoked, expired), else None (unknown, malformed, wrong
        secret)."""
        parts = token.split("_", 2)
        if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
            return None
        key = self._read().get(parts[1])
        if key is None or not hmac.compare_digest(key.sha256, _digest(token)):
            return None
        return key

    def authenticate(self, token: str) -> ApiKey | None:
        """The live key this token belongs to, else None (unknown, malformed, revoked, expired)."""
        key = self.identify(token)
        return key if key is not None and key.state() == ACTIVE else None


def claimed_id(token: str) -> str | None:
    """The key id a token claims, when it has a key id's shape (never any of the secret)."""
    parts = token.split("_", 2)
    if len(parts) == 3 and parts[0] == TOKEN_PREFIX and len(parts[1]) == 12 and all(
            c in "0123456789abcdef" for c in parts[1]):
        return parts[1]
    return None
