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


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # the point of the test
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


def test_a_warmed_up_process_answers_its_first_photo_from_the_trace(photos, tmp_path):
    embedder = Embedder.from_settings(Settings(home=tmp_path, device="cpu", batch_size=16))
    warm_up(embedder, tmp_path)
    assert embedder.backbone.traced
    plain = Backbone(device="cpu", batch_size=16, trace=False)
    batch = photos * 3  # 15 photos, as a server's calls hold up to 16
    np.testing.assert_allclose(embedder.features(batch), plain.features(batch), atol=1e-4)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # the point of the test
def test_a_trace_that_holds_for_one_batch_size_only_is_not_kept(caplog):
    owner = torch.nn.Linear(3, 3)
    forward = TracedOnReuse(lambda x: owner(x).reshape(2, 3), owner, enabled=True)  # a batch of 2 baked in
    with torch.inference_mode():
        forward(torch.ones(2, 3))
        forward(torch.ones(2, 3))  # traced: its check on a batch of 3 fails, so it stays layer by layer
    assert not forward.traced and "could not be traced" in caplog.text


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # the point of the test
def test_a_trace_that_fails_on_a_later_batch_gives_way_to_the_layers(caplog):
    owner = torch.nn.Linear(3, 3)

    def first_two(x):  # at most two rows; a trace keeps the count of rows it was made with
        n = min(len(x), 2)
        return owner(x)[:n].reshape(n, 3)

    forward = TracedOnReuse(first_two, owner, enabled=True)
    with torch.inference_mode():
        forward(torch.ones(2, 3))
        forward(torch.ones(2, 3))
        assert forward.traced  # its checks, on batches of 2 and 3, hold
        one = forward(torch.ones(1, 3))
    assert one.shape == (1, 3) and not forward.traced and "runs layer by layer from now on" in caplog.text
