"""The command line with another backbone weight file: its gallery refuses queries from other weights."""

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

    assert main(["locate", str(home / "photos/p0.jpg")]) == 2  # default weights: another model
    assert "holds embeddings of model 'tf_efficientnet_lite0:sha256-" in capsys.readouterr().err

    assert main(["locate", str(home / "photos/p0.jpg"), "--checkpoint", str(checkpoint), "-k", "1"]) == 0
    assert "40.00000, -3.00000" in capsys.readouterr().out  # its own photo, found again
