"""One versioned model bundle directory: everything a query needs besides the backbone weights.

    bundle.json          format, version, bundle id, backbone name and weights id, embedding dim,
                         preprocessing, heads, RRM shape, training metrics, created time, file hashes
    partitions.json      the coarse/middle/fine hierarchy
    head-<kind>.safetensors, rrm.safetensors

Tensors are safetensors only, so loading never unpickles. Every file's SHA-256 is in bundle.json, and
the bundle id is the SHA-256 of bundle.json's content (creation time aside), so an edited or damaged
file is caught on load, and the same content always gets the same id.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from geoloc.models.heads import HEADS, make_head
from geoloc.models.partition import Hierarchy
from geoloc.models.rrm import RRM
from geoloc.models.device import resolve_device

BUNDLE_FORMAT = "geoloc.bundle"
FORMAT_VERSION = 1
MANIFEST = "bundle.json"
PARTITIONS = "partitions.json"
RRM_FILE = "rrm.safetensors"
_UNHASHED = ("bundle_id", "created")
_BATCH = 4096


class BundleError(ValueError):
    """A bundle that is missing, damaged, edited or of an unsupported format."""


@dataclass
class Bundle:
    path: Path
    manifest: dict
    hierarchy: Hierarchy
    heads: dict[str, nn.Module]
    rrm: RRM
    device: torch.device

    @property
    def bundle_id(self) -> str:
        return self.manifest["bundle_id"]

    @property
    def backbone_name(self) -> str:
        return self.manifest["backbone"]["name"]

    @property
    def backbone_model_id(self) -> str:
        return self.manifest["backbone"]["model_id"]

    @property
    def embedding_dim(self) -> int:
        return self.manifest["embedding_dim"]

    @property
    def preprocessing(self) -> dict:
        return self.manifest["preprocessing"]

    @property
    def default_head(self) -> str:
        return self.manifest["default_head"]

    @property
    def model_id(self) -> str:
        """Names what produced the gallery vectors: the backbone weights and this bundle's RRM weights.
        Heads and partitions are left out on purpose: retraining the classifier keeps the gallery."""
        return f"{self.backbone_model_id}+rrm-{self.manifest['files'][RRM_FILE][:16]}"

    def cell_log_probs(self, features, head: str | None = None) -> np.ndarray:
        """(n, n_fine) log-probabilities of the fine cells, from `head` (default: the bundle's)."""
        name = head or self.default_head
        if name not in self.heads:
            raise ValueError(f"this bundle has no head {name!r} (it has: {', '.join(self.heads)})")
        return self._run(self.heads[name].cell_log_probs, features)

    def embed(self, features) -> np.ndarray:
        """(n, D) L2-normalised RRM embeddings of backbone features."""
        return self._run(self.rrm, features)

    def _run(self, fn, features) -> np.ndarray:
        x = np.asarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.embedding_dim:
            raise ValueError(f"expected backbone features of shape (n, {self.embedding_dim}), got {x.shape}")
        with torch.inference_mode():
            return torch.cat([fn(batch.to(self.device)).cpu() for batch in torch.from_numpy(x).split(_BATCH)]).numpy()


def save_bundle(
    directory: str | Path,
    *,
    hierarchy: Hierarchy,
    heads: dict[str, nn.Module],
    rrm: RRM,
    backbone_name: str,
    backbone_model_id: str,
    preprocessing: dict | None = None,
    metrics: dict | None = None,
    default_head: str | None = None,
) -> Bundle:
    """Write a new bundle into `directory` (absent or empty) and return it loaded back.

    Files are written beside it first and moved into place at once, so no reader ever sees half a
    bundle. `heads` maps a kind ("ce", "hc", "mvmf") to a head trained on `hierarchy`."""
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise BundleError(f"{directory}: already exists and is not an empty directory")
    if not heads:
        raise BundleError("a bundle needs at least one head")
    default_head = default_head or next(iter(heads))
    if default_head not in heads:
        raise BundleError(f"default head {default_head!r} is not among the heads {list(heads)}")
    for kind, head in heads.items():
        _check_head(kind, head, rrm.dim, hierarchy)

    staging = directory.parent / f".{directory.name}.{uuid.uuid4().hex}.partial"
    staging.mkdir(parents=True)
    try:
        (staging / PARTITIONS).write_text(hierarchy.to_json())
        head_files = {kind: f"head-{kind}.safetensors" for kind in heads}
        for kind, head in heads.items():
            _save_tensors(head, staging / head_files[kind])
        _save_tensors(rrm, staging / RRM_FILE)
        manifest = {
            "format": BUNDLE_FORMAT,
            "version": FORMAT_VERSION,
            "backbone": {"name": backbone_name, "model_id": backbone_model_id},
            "embedding_dim": rrm.dim,
            "preprocessing": preprocessing or {},
            "heads": {kind: {"file": name} for kind, name in head_files.items()},
            "default_head": default_head,
            "rrm": {"file": RRM_FILE, "dim": rrm.dim, "hidden": rrm.hidden},
            "partitions": PARTITIONS,
            "metrics": metrics or {},
            "files": {p.name: _sha256(p) for p in sorted(staging.iterdir())},
        }
        manifest = json.loads(json.dumps(manifest, default=_json_scalar))  # what a reader will see
        manifest["bundle_id"] = _content_id(manifest)
        manifest["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        if directory.exists():
            directory.rmdir()
        staging.rename(directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return load_bundle(directory)


def load_bundle(directory: str | Path, device: str = "cpu") -> Bundle:
    """Read and verify a bundle; raise BundleError saying what is wrong with it."""
    directory = Path(directory)
    manifest = _read_manifest(directory)
    for name, digest in manifest["files"].items():
        path = directory / name
        if not path.is_file():
            raise BundleError(f"{directory}: file {name} is missing")
        if _sha256(path) != digest:
            raise BundleError(f"{directory}: {name} does not match its checksum (modified or damaged)")
    dev = resolve_device(device)
    try:
        hierarchy = Hierarchy.from_json((directory / manifest["partitions"]).read_text())
        rrm = RRM(manifest["rrm"]["dim"], manifest["rrm"]["hidden"])
        rrm.load_state_dict(_load_tensors(directory / manifest["rrm"]["file"]))
        heads = {}
        for kind, entry in manifest["heads"].items():
            heads[kind] = make_head(kind, manifest["embedding_dim"], hierarchy)
            heads[kind].load_state_dict(_load_tensors(directory / entry["file"]))
    except (KeyError, TypeError, ValueError, RuntimeError, SafetensorError) as err:
        raise BundleError(f"{directory}: inconsistent bundle: {err}") from err
    for module in (rrm, *heads.values()):
        module.to(dev).eval()
    return Bundle(directory, manifest, hierarchy, heads, rrm, dev)


def _read_manifest(directory: Path) -> dict:
    path = directory / MANIFEST
    if not directory.is_dir():
        raise BundleError(f"{directory}: no such bundle directory")
    if not path.is_file():
        raise BundleError(f"{directory}: not a model bundle (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: not a {BUNDLE_FORMAT} manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise BundleError(
            f"{path}: bundle format version {manifest.get('version')!r} is not supported "
            f"(this geoloc reads version {FORMAT_VERSION})"
        )
    if not isinstance(manifest.get("files"), dict) or manifest.get("bundle_id") != _content_id(manifest):
        raise BundleError(f"{path}: content does not match its bundle id (edited after saving)")
    try:
        used = {manifest["partitions"], manifest["rrm"]["file"], *(h["file"] for h in manifest["heads"].values())}
    except (KeyError, TypeError) as err:
        raise BundleError(f"{path}: incomplete manifest ({err!r})") from err
    if not used <= set(manifest["files"]) or any(Path(name).name != name for name in manifest["files"]):
        raise BundleError(f"{path}: the files it uses must be listed, with checksums, as plain names")
    return manifest


def _check_head(kind: str, head: nn.Module, dim: int, hierarchy: Hierarchy) -> None:
    """Refuse a head that the loader could not rebuild from this hierarchy."""
    if kind not in HEADS:
        raise BundleError(f"unknown head kind {kind!r}: expected one of {HEADS.names()}")
    try:
        make_head(kind, dim, hierarchy).load_state_dict(head.state_dict())
    except RuntimeError as err:
        raise BundleError(f"head {kind!r} does not fit the hierarchy and embedding dim {dim}: {err}") from err


def _save_tensors(module: nn.Module, path: Path) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(path))


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path), device="cpu")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _content_id(manifest: dict) -> str:
    content = {k: v for k, v in manifest.items() if k not in _UNHASHED}
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _json_scalar(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
