"""What a source yields: a usable photo or a skip with its reason; deterministic point ids."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field

from PIL import Image

ORIGINAL = "original"  # key, in a photo's payload `extra`, of its copy's name in geoloc's store (ingest.originals)
PHOTOGRAPHER = "photographer"  # key, in `extra`, of who took it: a manifest's column, else EXIF Artist

# Fixed namespace: the same photo in the same collection always maps to the same point id.
POINT_NAMESPACE = uuid.UUID("6f1b2a7e-9a53-4c1e-8a9d-3f0c5d1b7e42")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def point_id(collection: str, sha256: str) -> str:
    """UUIDv5 of (collection, image digest): a redelivered or repeated upsert never duplicates."""
    return str(uuid.uuid5(POINT_NAMESPACE, f"{collection}/{sha256}"))


@dataclass
class PhotoRecord:
    source: str
    lat: float
    lon: float
    sha256: str
    image: Image.Image
    extra: dict = field(default_factory=dict)


@dataclass
class Skipped:
    source: str
    reason: str
