"""geoloc eval on synthetic features whose direction encodes the place: learned methods must see it."""

import numpy as np
import pytest
import torch

from geoloc.crossval import cross_validate, write_report
from tests.synthetic import place_coded_features

torch.set_num_threads(1)

@pytest.fixture(scope="module")
def features():
    return place_coded_features(per_city=60, dim=32, noise=0.6, jitter_deg=0.02, model_id="synthetic:test")


def test_every_method_is_evaluated_by_photographer_and_reported(features, tmp_path):
    report = cross_validate(features, folds=3, seed=0, progress=lambda _: None)
    results = report["results"]
    assert report["photos"] == len(features) and report["folds"] == 3
    for name in ("densest cell (constant)", "NN, backbone features", "CE cell centre", "HC cell centre",
                 "MVMF cell centre", "RRM retrieval, NN", "SwC MVMF + RRM (K=10, DBSCAN)",
                 "SwC MVMF, K=1", "SwC MVMF, K=20", "SwC MVMF, mean", "SwC MVMF, kde"):
        assert results[name]["n"] == len(features), name
    # the features encode the city: every learned method must place most photos in the right city,
    # while the constant answer can only be right for one city in six
    assert results["densest cell (constant)"]["25km"] < 40
    for name in ("NN, backbone features", "MVMF cell centre", "SwC MVMF + RRM (K=10, DBSCAN)"):
        assert results[name]["25km"] > 80, (name, results[name])
    # answers with signals get out-of-fold calibrated probabilities, scored; the constant answer has none
    assert "calibrated" not in results["densest cell (constant)"]
    for name in ("NN, backbone features", "SwC MVMF + RRM (K=10, DBSCAN)", "SwC MVMF, kde"):
        calibrated = results[name]["calibrated"]
        assert set(calibrated["calibration_error"]) == {"1km", "25km", "200km", "750km", "2500km"}, name
        assert calibrated["selective"]["25km"]["100%"] == pytest.approx(results[name]["25km"]), name
        assert abs(calibrated["mean_probability"]["25km"] - calibrated["base_rate"]["25km"]) < 0.1, name
    paths = write_report(report, tmp_path)
    text = paths["markdown"].read_text()
    assert "SwC MVMF + RRM" in text and "Confidence: calibrated probabilities" in text
    assert paths["plot"].stat().st_size > 10_000 and paths["reliability"].stat().st_size > 10_000


def test_features_without_photographers_are_refused(features):
    no_owner = features.subset(np.ones(len(features), bool))
    no_owner.photographers = np.array([""] * len(features))
    with pytest.raises(ValueError, match="photographer"):
        cross_validate(no_owner, folds=2)
