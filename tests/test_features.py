"""The feature cache: one pass over a source, resumable after an interruption, identical either way."""

import numpy as np
import pytest
import torch

from geoloc import features as feature_cache
from geoloc.models.backbone import Backbone
from tests.photos import write_photo

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def backbone():
    return Backbone(batch_size=4)


@pytest.fixture
def folder(tmp_path):
    for i in range(7):
        write_photo(tmp_path / "photos" / f"p{i}.jpg", 10.0 + i, 20.0 + i, colour=(30 * i, 90, 200 - 20 * i))
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"not a photo")
    return tmp_path / "photos"


def test_an_interrupted_extraction_resumes_to_the_same_result(backbone, folder, tmp_path, monkeypatch):
    monkeypatch.setattr(feature_cache, "PART_SIZE", 3)
    whole, skipped = feature_cache.extract_features(folder, tmp_path / "whole.npz", backbone)
    assert len(whole) == 7 and skipped == {"undecodable_image": 1}

    seen = []

    def stop_after_four(_):
        seen.append(1)
        if len(seen) == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        feature_cache.extract_features(folder, tmp_path / "resumed", backbone, progress=stop_after_four)
    assert len(list((tmp_path / "resumed.npz.parts").glob("part-*.npz"))) == 1
    resumed, skipped_again = feature_cache.extract_features(folder, tmp_path / "resumed", backbone)
    assert skipped_again == skipped
    assert not (tmp_path / "resumed.npz.parts").exists()
    loaded = feature_cache.load_features(tmp_path / "resumed.npz")
    assert list(loaded.sources) == list(whole.sources)
    np.testing.assert_allclose(loaded.features, whole.features, atol=1e-4)  # a run traces its model from its 2nd pass
    np.testing.assert_allclose(loaded.lat, whole.lat)
    assert loaded.model_id == backbone.model_id


def test_a_cache_started_with_another_backbone_is_not_mixed(backbone, folder, tmp_path):
    parts = tmp_path / "f.npz.parts"
    parts.mkdir()
    (parts / "meta.json").write_text('{"model_id": "another:model"}')
    with pytest.raises(ValueError, match="another backbone"):
        feature_cache.extract_features(folder, tmp_path / "f.npz", backbone)
