"""The command line with another backbone weight file: the gallery keeps its embeddings in that model's
store, answers later commands with that model, and never answers one model's query from another's store."""

import json

import pytest
import torch
from safetensors.torch import save_file

from geoloc.cli import main
from geoloc.models.backbone import Backbone
from tests.photos import write_photo

torch.set_num_threads(1)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOLOC_HOME", str(tmp_path / "home"))
    for i in range(3):
        write_photo(tmp_path / "photos" / f"p{i}.jpg", 40.0 + i, -3.0 - i, colour=(60 * i, 100, 30))
    return tmp_path


def test_a_local_checkpoint_indexes_and_only_its_own_queries_are_answered(home, capsys):
    checkpoint = home / "lite0.safetensors"
    weights = Backbone(pretrained="none").model.state_dict()
    save_file({k: v.contiguous() for k, v in weights.items()}, str(checkpoint))
    photos = str(home / "photos")
    assert main(["index", photos, "--collection", "own", "--checkpoint", str(checkpoint)]) == 0
    assert "indexed 3 photos" in capsys.readouterr().out

    # the default weights, named: their own store is empty, the checkpoint's photos are not theirs
    assert main(["locate", str(home / "photos/p0.jpg"), "--backbone", "tf_efficientnet_lite0"]) == 2
    assert "holds no photos yet" in capsys.readouterr().err

    for named in ([], ["--checkpoint", str(checkpoint)]):  # no model named: the gallery's serving model
        assert main(["locate", str(home / "photos/p0.jpg"), "-k", "1", "--json", *named]) == 0
        answer = json.loads(capsys.readouterr().out)["answers"][0]
        assert (answer["lat"], answer["lon"]) == pytest.approx((40.0, -3.0))  # its own photo, found again
