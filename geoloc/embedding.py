"""Photos -> gallery vectors: encoder (backbone) features, then the RRM when a model bundle is loaded.

Indexing and locating both go through here, so a gallery and its queries always share one model.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from geoloc.settings import Settings


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class Embedder:
    def __init__(self, backbone, bundle=None):
        self.backbone = backbone
        self.bundle = bundle

    @classmethod
    def from_settings(cls, settings: Settings) -> "Embedder":
        """The encoder named by the settings, built through the encoder registry; under a bundle, the bundle's
        own encoder unless the settings name a refinement of it (``clip:ViT-B-32`` for a bundle of ``clip``)."""
        from geoloc.models.encoders import build_encoder

        bundle = None
        if settings.bundle:
            from geoloc.models.bundle import load_bundle

            bundle = load_bundle(settings.bundle)
        name = settings.backbone
        if bundle is not None and name.split(":")[0] != bundle.backbone_name:
            name = bundle.backbone_name
        backbone = build_encoder(name, settings.checkpoint, device=settings.device, batch_size=settings.batch_size,
                                 trace=settings.trace_model)
        if bundle is not None and bundle.backbone_model_id != backbone.model_id:
            raise ValueError(f"bundle was trained on backbone '{bundle.backbone_model_id}', "
                             f"but '{backbone.model_id}' is loaded")
        return cls(backbone, bundle)

    @property
    def model_id(self) -> str:
        return self.bundle.model_id if self.bundle else self.backbone.model_id

    @property
    def bundle_id(self) -> str | None:
        return self.bundle.bundle_id if self.bundle else None

    @property
    def dim(self) -> int:
        return self.backbone.dim

    def features(self, images: list[Image.Image]) -> np.ndarray:
        return self.backbone.features(images)

    def vectors(self, features: np.ndarray) -> np.ndarray:
        """Backbone features -> L2-normalised gallery vectors (RRM embeddings under a bundle)."""
        if self.bundle is not None:
            return l2_normalise(self.bundle.embed(features))
        return l2_normalise(features)
