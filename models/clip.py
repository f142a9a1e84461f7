"""CLIP-family encoders through open_clip, from files on disk: L2-normalised image embeddings, and text
embeddings in the same space (for zero-shot priors).

Where the model comes from, in open_clip's own formats:
* a directory holding ``open_clip_config.json`` and a weights file (open_clip's ``local-dir:``);
* a built-in open_clip architecture (``ViT-B-32``, see ``open_clip.list_models()``) and a weights file;
* a Hugging Face hub repository already in the local hub cache, read as that directory: nothing is
  downloaded (HF_HUB_OFFLINE semantics). `fetch` is the one call that downloads, through open_clip's own
  hub download, and only when a user asks for it.

open_clip is the optional extra ``clip`` (``pip install 'geoloc[clip]'``), imported only when a CLIP model is
described or used.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from geoloc.models.device import resolve_device
from geoloc.models.encoding import EncoderUnavailable, run_batches, sha256_file

CONFIG_FILE = "open_clip_config.json"
HUB_PREFIX = "hf-hub:"
LOCAL_DIR = "local-dir:"
INSTALL = "pip install 'geoloc[clip]'"  # open_clip_torch


def installed() -> bool:
    return importlib.util.find_spec("open_clip") is not None


def open_clip_module():
    if not installed():
        raise EncoderUnavailable(f"CLIP encoders need open_clip: {INSTALL}")
    import open_clip

    return open_clip


@dataclass(frozen=True)
class ClipSource:
    """A CLIP model's architecture and weights on disk: what open_clip is given, and what names the model."""

    model_name: str  # open_clip's: "local-dir:/abs/dir" or a built-in architecture
    weights: Path
    config: dict  # the directory's open_clip_config.json, or {"architecture": name}
    dim: int

    @classmethod
    def from_dir(cls, directory: str | Path) -> ClipSource:
        directory = Path(directory).expanduser()
        config_path = directory / CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(f"{directory} has no {CONFIG_FILE}: a CLIP directory holds open_clip's config "
                                    "and weights (or name an architecture: --backbone clip:ARCH --checkpoint FILE)")
        config = json.loads(config_path.read_text())
        if "embed_dim" not in config.get("model_cfg", {}):
            raise ValueError(f"{config_path} is not an open_clip config: it has no model_cfg.embed_dim")
        open_clip_module()
        from open_clip.factory import _find_checkpoint_in_dir  # the very file open_clip loads from a local-dir

        weights = _find_checkpoint_in_dir(directory)
        if weights is None:
            raise EncoderUnavailable(f"{directory} holds no CLIP weights (.safetensors, .bin or .pth)")
        return cls(LOCAL_DIR + str(directory.resolve()), Path(weights), config, int(config["model_cfg"]["embed_dim"]))

    @classmethod
    def from_file(cls, architecture: str, weights: str | Path) -> ClipSource:
        open_clip = open_clip_module()
        model_cfg = open_clip.get_model_config(architecture)
        if model_cfg is None:
            raise ValueError(f"unknown open_clip architecture '{architecture}' (open_clip.list_models() names them)")
        if not Path(weights).is_file():
            raise FileNotFoundError(f"no CLIP weights file at {weights}")
        return cls(architecture, Path(weights), {"architecture": architecture}, int(model_cfg["embed_dim"]))

    @classmethod
    def from_hub_cache(cls, repo: str) -> ClipSource:
        """The repository's files in the local Hugging Face cache (HF_HUB_CACHE); never downloads."""
        from huggingface_hub import constants, try_to_load_from_cache

        config = try_to_load_from_cache(repo, CONFIG_FILE)
        if not isinstance(config, str):
            raise EncoderUnavailable(f"{repo} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}): "
                                     f"fetch it where the hub is reachable (geoloc weights fetch {HUB_PREFIX}{repo})")
        return cls.from_dir(Path(config).parent)

    @property
    def pretrained(self) -> str | None:
        """open_clip's `pretrained` argument: a local-dir finds its own weights."""
        return None if self.model_name.startswith(LOCAL_DIR) else str(self.weights)

    def model_id(self, name: str) -> str:
        """`name:sha256-<16 hex>` over the weights and the config: the same files give the same id wherever
        they lie, other weights another id."""
        digest = hashlib.sha256(sha256_file(self.weights).encode())
        digest.update(json.dumps(self.config, sort_keys=True).encode())
        return f"{name}:sha256-{digest.hexdigest()[:16]}"


def clip_source(checkpoint: str | Path | None, architecture: str | None = None) -> ClipSource:
    """What `--checkpoint` names for a CLIP model: a directory, ``hf-hub:ORG/REPO`` in the local cache, or, with
    an architecture, a weights file."""
    if checkpoint is None:
        raise EncoderUnavailable("a CLIP model needs --checkpoint: a directory with open_clip_config.json and "
                                 f"weights, or {HUB_PREFIX}ORG/REPO in the Hugging Face cache")
    if architecture:
        return ClipSource.from_file(architecture, checkpoint)
    if str(checkpoint).startswith(HUB_PREFIX):
        return ClipSource.from_hub_cache(str(checkpoint)[len(HUB_PREFIX):])
    if Path(checkpoint).is_file():
        raise ValueError(f"{checkpoint} is a weights file: name its architecture too (--backbone clip:ViT-B-32)")
    return ClipSource.from_dir(checkpoint)


def fetch(repo: str) -> Path:
    """Download a hub repository's open_clip config and weights into the Hugging Face cache, with open_clip's own
    hub download (which prefers the .safetensors form); returns the cached directory."""
    open_clip_module()
    from open_clip.pretrained import download_pretrained_from_hf

    try:
        config = download_pretrained_from_hf(repo, filename=CONFIG_FILE)
        download_pretrained_from_hf(repo)
    except FileNotFoundError as exc:
        raise EncoderUnavailable(f"could not download {repo} from the Hugging Face hub: {exc}") from None
    return Path(config).parent


class ClipEncoder:
    """A frozen CLIP model: ``features()`` gives (n, dim) L2-normalised image embeddings."""

    def __init__(self, source: ClipSource, name: str = "clip", device: str = "auto", batch_size: int = 32):
        open_clip = open_clip_module()
        self.name, self.source, self.batch_size = name, source, int(batch_size)
        self.device = resolve_device(device)
        model, _, self.transform = open_clip.create_model_and_transforms(
            source.model_name, pretrained=source.pretrained, device=self.device, require_pretrained=True,
            pretrained_text=False)
        self.model = model.eval().requires_grad_(False)
        self.preprocessing = dict(open_clip.get_model_preprocess_cfg(self.model))
        self._model_id = source.model_id(name)
        self._tokenizer = None

    @property
    def model_id(self) -> str:
        """Name + hash of weights and config; embeddings from different ids must not be mixed."""
        return self._model_id

    @property
    def dim(self) -> int:
        return self.source.dim

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self.transform(image.convert("RGB"))

    def _to_input(self, images: list[Image.Image]) -> torch.Tensor:
        return torch.stack([self.preprocess(im) for im in images]).to(self.device)

    def features(self, images: list[Image.Image]) -> np.ndarray:
        """(n, dim) float32 L2-normalised image embeddings."""
        return run_batches(images, self.batch_size, self._to_input,
                           lambda x: self.model.encode_image(x, normalize=True), self.dim, self.device)

    def encode_text(self, prompts: list[str]) -> np.ndarray:
        """(n, dim) float32 L2-normalised text embeddings, comparable with `features()` by dot product."""
        if not hasattr(self.model, "encode_text"):
            raise EncoderUnavailable(f"{self.name} has no text tower")
        if self._tokenizer is None:
            self._tokenizer = open_clip_module().get_tokenizer(self.source.model_name)
        return run_batches(list(prompts), self.batch_size, lambda p: self._tokenizer(p).to(self.device),
                           lambda t: self.model.encode_text(t, normalize=True), self.dim, self.device)
