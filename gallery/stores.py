"""One vector store per embedding model, side by side in one gallery: the way to move to a better encoder.

Similarities between two models' embeddings mean nothing, and Qdrant Edge fixes a shard's vectors when the
shard is created, so each model id gets a store of its own (an Edge shard under the gallery directory, or a
collection on a Qdrant server). `models.json` beside them records each store's model, dimension and the
encoder settings that made it, and which store serves queries. Re-embedding fills a new model's store while
the serving one keeps answering; queries switch only once the new store holds every photo the serving one
holds, so an answer never mixes two models.

A gallery made before stores existed (one shard at the gallery's top) is adopted as the store of its model.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from filelock import FileLock

from geoloc.gallery.faults import GalleryUnavailable

REGISTRY_FILE = "models.json"
TOP_STORE = "."  # the store at the gallery's top: the first model's, as galleries were before stores


class ModelStores:
    def __init__(self, root: Path, lock_timeout: float = -1):
        self.root = Path(root)
        self._file = self.root / REGISTRY_FILE
        self._lock = FileLock(str(self.root / "models.lock"), timeout=lock_timeout)  # seconds; -1: for ever

    # ------------------------------------------------------------------------------------------ reading

    def read(self) -> dict:
        """{"serving": model id or None, "stores": {model id: {"store", "dim", "encoder"}}}."""
        try:
            if not self._file.exists():
                return {"serving": None, "stores": {}}
            return json.loads(self._file.read_text())
        except (OSError, ValueError) as exc:
            raise GalleryUnavailable(f"cannot read {self._file} ({exc}): restore it from a backup") from None

    def serving(self) -> str | None:
        return self.read()["serving"]

    def store_of(self, model_id: str) -> str | None:
        entry = self.read()["stores"].get(model_id)
        return None if entry is None else entry["store"]

    def encoder_of(self, model_id: str) -> dict:
        """The encoder settings (backbone, checkpoint, bundle) that made this model's store."""
        return dict(self.read()["stores"].get(model_id, {}).get("encoder") or {})

    # ------------------------------------------------------------------------------------------ writing

    def claim(self, model_id: str, dim: int, encoder: dict | None = None, top_model: str | None = None) -> str:
        """The store of this model, registered if new: the top store when the gallery has no other yet (or
        already holds this model: `top_model`), else a directory of its own. The first store serves."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock:
            registry = self.read()
            before = json.dumps(registry, sort_keys=True)
            stores = registry["stores"]
            if model_id not in stores:
                top_taken = any(s["store"] == TOP_STORE for s in stores.values()) or (
                    top_model is not None and top_model != model_id)
                store = _directory_name(model_id) if top_taken else TOP_STORE
                stores[model_id] = {"store": store, "dim": int(dim), "encoder": dict(encoder or {})}
            elif encoder and not stores[model_id]["encoder"]:  # an adopted store learns what made it
                stores[model_id]["encoder"] = dict(encoder)
            if registry["serving"] is None:
                registry["serving"] = model_id
            if json.dumps(registry, sort_keys=True) != before:
                self._write(registry)
            return stores[model_id]["store"]

    def switch(self, model_id: str) -> None:
        with self._lock:
            registry = self.read()
            if model_id not in registry["stores"]:
                raise ValueError(f"no store for model '{model_id}'")
            registry["serving"] = model_id
            self._write(registry)

    def forget(self, model_id: str) -> str:
        """Unregister a store that does not serve; the caller deletes its data. Its store name."""
        with self._lock:
            registry = self.read()
            if registry["serving"] == model_id:
                raise ValueError(f"model '{model_id}' serves queries: switch to another before dropping it")
            entry = registry["stores"].pop(model_id)
            self._write(registry)
            return entry["store"]

    def _write(self, registry: dict) -> None:
        tmp = self._file.with_suffix(".tmp")
        tmp.write_text(json.dumps(registry, indent=1, sort_keys=True))
        os.replace(tmp, self._file)


def _directory_name(model_id: str) -> str:
    """Readable and unique: the model id's safe characters plus a hash of the whole id."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", model_id).strip("-")[:48]
    return f"models/{slug}-{hashlib.sha256(model_id.encode()).hexdigest()[:10]}"
