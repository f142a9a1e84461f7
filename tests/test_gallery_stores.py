"""One store per embedding model in one gallery: registration, the serving model, and adopting a gallery
made before stores existed."""

from __future__ import annotations

import numpy as np
import pytest

from geoloc.gallery.base import GalleryPoint, make_payload
from geoloc.gallery.edge import EdgeGallery
from geoloc.gallery.open import open_gallery
from geoloc.gallery.stores import TOP_STORE, ModelStores
from geoloc.settings import Settings


def _point(i: int, model: str, dim: int) -> GalleryPoint:
    vector = np.random.default_rng(i).normal(size=dim)
    return GalleryPoint(f"00000000-0000-0000-0000-{i:012d}", vector,
                        make_payload("news", 10.0 + i, 20.0, f"p{i}.jpg", model, str(i)))


def test_each_model_gets_its_own_store_and_the_first_serves(tmp_path):
    settings = Settings(home=tmp_path, qdrant_url=None)
    with open_gallery(settings, 8, "model-a", {"backbone": "a"}) as a:
        a.upsert([_point(1, "model-a", 8)])
    with open_gallery(settings, 16, "model-b", {"backbone": "b"}) as b:
        b.upsert([_point(2, "model-b", 16), _point(3, "model-b", 16)])
    stores = ModelStores(settings.gallery_dir)
    assert stores.serving() == "model-a" and stores.store_of("model-a") == TOP_STORE
    assert stores.store_of("model-b").startswith("models/model-b-")
    assert stores.encoder_of("model-b") == {"backbone": "b"}
    with open_gallery(settings) as serving:  # no model named: the serving store
        assert serving.count() == 1 and serving.dim == 8
    stores.switch("model-b")
    with open_gallery(settings) as serving:
        assert serving.count() == 2 and serving.dim == 16
    with pytest.raises(ValueError, match="serves queries"):
        stores.forget("model-b")
    assert stores.forget("model-a") == TOP_STORE and stores.store_of("model-a") is None


def test_a_gallery_from_before_stores_is_adopted_as_its_models_store(tmp_path):
    settings = Settings(home=tmp_path, qdrant_url=None)
    with EdgeGallery(settings.gallery_dir, 8) as legacy:  # the old layout: one shard at the top
        legacy.upsert([_point(1, "old-model", 8)])
    with open_gallery(settings, 4, "new-model") as new:
        assert new.count() == 0 and new.dim == 4
    stores = ModelStores(settings.gallery_dir)
    assert stores.store_of("old-model") == TOP_STORE and stores.serving() == "old-model"
    assert stores.store_of("new-model") != TOP_STORE
    with open_gallery(settings, 8, "old-model", {"backbone": "old"}) as old:
        assert old.count() == 1
    assert stores.encoder_of("old-model") == {"backbone": "old"}  # learnt once a process names it
