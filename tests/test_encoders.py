"""Encoders as a user meets them: a tiny CLIP made here with open_clip, saved in open_clip's own formats, loaded by
name through the registry, listed by `geoloc encoders`, and indexing and locating real photos through the CLI."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from geoloc.cli import main
from geoloc.embedding import Embedder
from geoloc.models.encoders import ENCODERS, build_encoder, describe_encoders, fetch_weights, resolve
from geoloc.models.encoding import EncoderUnavailable
from geoloc.settings import Settings

open_clip = pytest.importorskip("open_clip")
torch.set_num_threads(1)  # shared 2-core machine

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "im2gps3k-dev"
TINY = {"embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}


def save_tiny_clip(directory: Path, seed: int) -> Path:
    """A randomly initialised tiny CLIP in open_clip's directory format: open_clip_config.json + safetensors."""
    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY)
    directory.mkdir(parents=True)
    (directory / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY, "preprocess_cfg": {}}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "open_clip_model.safetensors"))
    return directory


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny", seed=0)


@pytest.fixture(scope="module")
def encoder(tiny):
    return build_encoder("clip", tiny, device="cpu", batch_size=2)


@pytest.fixture(scope="module")
def images():
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    return [Image.new("RGB", (40 + 10 * i, 30), c) for i, c in enumerate(colours)]


def test_a_clip_directory_gives_normalised_deterministic_embeddings(encoder, tiny, images):
    assert encoder.dim == 32 and encoder.preprocessing["size"] == (32, 32)
    features = encoder.features(images)  # batches of 2 and 1
    assert features.shape == (3, 32) and features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(encoder.features(images), features, atol=1e-6)
    again = build_encoder("clip", tiny, device="cpu")
    np.testing.assert_allclose(again.features(images), features, atol=1e-5)
    assert again.model_id == encoder.model_id and encoder.model_id.startswith("clip:sha256-")
    assert encoder.features([]).shape == (0, 32)


def test_text_embeddings_share_the_image_space(encoder, images):
    text = encoder.encode_text(["a street in Paris", "a beach at sunset", "a mountain village"])
    assert text.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-5)
    assert (encoder.features(images) @ text.T).shape == (3, 3)


def test_the_model_id_follows_the_weights_not_the_folder(encoder, tiny, tmp_path):
    copy = shutil.copytree(tiny, tmp_path / "copy")
    assert build_encoder("clip", copy, device="cpu").model_id == encoder.model_id
    other = save_tiny_clip(tmp_path / "other", seed=1)
    assert build_encoder("clip", other, device="cpu").model_id != encoder.model_id


def test_an_architecture_name_and_a_weights_file(encoder, tiny, tmp_path, images):
    (tmp_path / "geoloc-tiny-clip.json").write_text(json.dumps(TINY))
    open_clip.add_model_config(tmp_path / "geoloc-tiny-clip.json")
    by_name = build_encoder("clip:geoloc-tiny-clip", tiny / "open_clip_model.safetensors", device="cpu")
    assert by_name.model_id.startswith("clip:geoloc-tiny-clip:sha256-")
    np.testing.assert_allclose(by_name.features(images), encoder.features(images), atol=1e-5)


def test_a_hub_cache_on_disk_is_read_without_downloading(encoder, tiny, tmp_path, monkeypatch):
    from huggingface_hub import constants

    repo = tmp_path / "hub" / "models--geoloc-test--tiny-clip"
    revision = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    shutil.copytree(tiny, repo / "snapshots" / revision)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert build_encoder("clip", "hf-hub:geoloc-test/tiny-clip", device="cpu").model_id == encoder.model_id
    with pytest.raises(EncoderUnavailable, match="not in the Hugging Face cache"):
        build_encoder("clip", "hf-hub:geoloc-test/absent", device="cpu")
    (row,) = [r for r in describe_encoders("clip-vit-b-32") if r.selected]
    assert not row.present and "geoloc weights fetch clip-vit-b-32" in row.how and row.dim == 512


def test_fetch_without_a_reachable_hub_says_so(tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # no request leaves this machine
    with pytest.raises(EncoderUnavailable, match="could not download laion/CLIP-ViT-B-32"):
        fetch_weights("clip-vit-b-32")
    assert main(["weights", "fetch", "hf-hub:geoloc-test/tiny-clip"]) == 2
    assert "could not download geoloc-test/tiny-clip" in capsys.readouterr().err
    assert main(["weights", "fetch", "tf_efficientnet_lite0"]) == 0


def test_bad_clip_sources_are_described_not_raised(tiny, tmp_path):
    rows = {r.name: r for r in describe_encoders("clip", tmp_path)}
    assert not rows["clip"].present and "open_clip_config.json" in rows["clip"].how
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY}))
    rows = {r.name: r for r in describe_encoders("clip", tmp_path)}
    assert not rows["clip"].present and "holds no CLIP weights" in rows["clip"].how and rows["clip"].dim is None
    with pytest.raises(ValueError, match="clip:ViT-B-32"):
        build_encoder("clip", tiny / "open_clip_model.safetensors")


def test_names_resolve_to_entries():
    assert resolve("tf_efficientnet_lite0") == (ENCODERS.get("tf_efficientnet_lite0"), None)
    assert resolve("clip:ViT-B-32") == (ENCODERS.get("clip"), "ViT-B-32")
    assert resolve("timm:resnet18") == (ENCODERS.get("timm"), "resnet18")
    assert resolve("resnet18") == (ENCODERS.get("timm"), "resnet18")
    with pytest.raises(ValueError, match="unknown encoder 'no-such-net'"):
        build_encoder("no-such-net", "weights.pt")
    with pytest.raises(EncoderUnavailable, match="give a local checkpoint"):
        build_encoder("resnet18")


def test_the_cli_lists_the_tiny_clip_and_lite0_as_present(tiny, capsys):
    assert main(["encoders", "--json", "--backbone", "clip", "--checkpoint", str(tiny)]) == 0
    listed = json.loads(capsys.readouterr().out)
    rows = {r["name"]: r for r in listed["encoders"]}
    assert rows["clip"] == {**rows["clip"], "dim": 32, "present": True, "selected": True}
    assert rows["tf_efficientnet_lite0"] == {**rows["tf_efficientnet_lite0"], "dim": 1280, "present": True}
    assert main(["encoders"]) == 0
    lines = capsys.readouterr().out.splitlines()
    (lite0,) = [line for line in lines if " tf_efficientnet_lite0 " in line]
    assert lite0.startswith("*") and "1280" in lite0 and "present" in lite0


def test_the_embedder_builds_the_configured_encoder(encoder, tiny, tmp_path):
    embedder = Embedder.from_settings(Settings(home=tmp_path, backbone="clip", checkpoint=str(tiny), device="cpu"))
    assert embedder.model_id == encoder.model_id and embedder.dim == 32


def _dev_manifests(directory: Path) -> tuple[Path, Path]:
    """Gallery: every photo of four photographers; queries: one photo each of three others."""
    with open(DEV / "manifest.csv", newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: (r["photographer"], r["filename"]))
    by_photographer: dict[str, list[dict]] = {}
    for row in rows:
        by_photographer.setdefault(row["photographer"], []).append(row)
    people = sorted(by_photographer, key=lambda p: (-len(by_photographer[p]), p))
    gallery = [r for p in people[:4] for r in by_photographer[p]][:12]
    queries = [by_photographer[p][0] for p in people[4:7]]
    paths = []
    for name, chosen in (("gallery.csv", gallery), ("queries.csv", queries)):
        path = directory / name
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["filename", "lat", "lon", "photographer"])
            for r in chosen:
                writer.writerow([DEV / "images" / r["filename"], r["lat"], r["lon"], r["photographer"]])
        paths.append(path)
    return paths[0], paths[1]


@pytest.mark.skipif(not (DEV / "manifest.csv").exists(), reason="the dev photos are not here")
def test_index_and_locate_real_photos_with_the_tiny_clip(encoder, tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GEOLOC_HOME", str(tmp_path / "home"))
    gallery, queries = _dev_manifests(tmp_path)
    model = ["--backbone", "clip", "--checkpoint", str(tiny)]
    assert main(["index", str(gallery), "--collection", "dev", *model]) == 0
    assert "indexed 12 photos" in capsys.readouterr().out

    assert main(["locate", str(queries), "--json", "-k", "3", *model]) == 0
    located = json.loads(capsys.readouterr().out)
    assert located["accuracy"]["n"] == 3 and len(located["answers"]) == 3
    for answer in located["answers"]:
        assert len(answer["neighbours"]) == 3 and answer["error_km"] >= 0

    # the default encoder, named: its own store holds nothing; unnamed, the gallery answers with the tiny CLIP
    assert main(["locate", str(queries), "--backbone", "tf_efficientnet_lite0"]) == 2
    assert "holds no photos yet" in capsys.readouterr().err
    assert main(["locate", str(queries), "--json", "-k", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["answers"][0]["neighbours"][0]["collection"] == "dev"
