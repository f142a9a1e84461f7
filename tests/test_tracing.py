"""The encoder's second forward pass on runs as a frozen TorchScript graph: the same features as layer by layer, on
real photos and at every batch size; never for a model that cannot be traced or a process that said no."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from geoloc.embedding import Embedder
from geoloc.locate import warm_up
from geoloc.models.backbone import Backbone
from geoloc.models.tracing import TracedOnReuse
from geoloc.settings import Settings
from tests.services import DATA

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def photos():
    names = [line.split(",", 1)[0] for line in (DATA / "manifest.csv").read_text().splitlines()[1:6]]
    return [Image.open(DATA / "images" / name).convert("RGB") for name in names]


def test_the_trace_gives_the_layers_features_at_every_batch_size(photos):
    plain = Backbone(device="cpu", batch_size=4, trace=False)
    traced = Backbone(device="cpu", batch_size=4)
    expected = plain.features(photos)  # batches of 4 and 1
    first = traced.features(photos[:1])
    assert not traced.traced  # a process that runs the model once never pays for the trace
    assert np.array_equal(first, expected[:1])
    second = traced.features(photos)  # its first batch is traced, its second runs the trace
    assert traced.traced and not plain.traced
    np.testing.assert_allclose(second, expected, atol=1e-4)
    for size in (1, 2, 5):
        np.testing.assert_allclose(traced.features(photos[:size]), expected[:size], atol=1e-4)


def test_a_model_that_cannot_be_traced_runs_layer_by_layer(caplog):
    owner = torch.nn.Linear(3, 3)
    forward = TracedOnReuse(lambda x: owner(x).sum().item(), owner, enabled=True)  # a float: untraceable
    x = torch.ones(2, 3)
    with torch.inference_mode():
        values = [forward(x) for _ in range(3)]
    assert not forward.traced and not forward.enabled
    assert len(set(values)) == 1 and "could not be traced" in caplog.text


def test_settings_can_keep_the_encoder_untraced(photos, tmp_path, monkeypatch):
    monkeypatch.setenv("GEOLOC_TRACE_MODEL", "0")
    embedder = Embedder.from_settings(Settings(home=tmp_path, device="cpu"))
    for _ in range(3):
        embedder.features(photos[:1])
    assert not embedder.backbone.traced


def test_a_warmed_up_process_answers_its_first_photo_from_the_trace(tmp_path):
    embedder = Embedder.from_settings(Settings(home=tmp_path, device="cpu"))
    warm_up(embedder, tmp_path)
    assert embedder.backbone.traced
