"""Fit a calibrator for one model on labelled photos and save it where Locator finds it.

Out-of-fold answers (geoloc.crossval.out_of_fold: each photo located against a gallery of the other
photographers' photos) give the signals and the errors; the calibrator is fitted on all of them and
carries the scores of its own photographer-disjoint cross-validation.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from geoloc.calibration import BUNDLE_FILE, Calibrator, calibrator_path, fit_cross_validated, signal_matrix
from geoloc.crossval import out_of_fold
from geoloc.features import FeatureSet
from geoloc.settings import Settings

LOCATOR_DEFAULTS = {"k": 10, "aggregator": "cluster", "top_cells": 1, "head": None}


def fit_calibrator(features: FeatureSet, bundle=None, *, folds: int = 5, seed: int = 0, out: str | Path | None = None,
                   home: str | Path | None = None, default: bool = False, data: str | None = None,
                   progress: Callable[[str], None] = print, **locator_options) -> tuple[Calibrator, Path]:
    """Fit on out-of-fold answers of `features` (with `bundle`: SwC with its heads and RRM) and save it:
    to `out`, else into the bundle's directory, else to $GEOLOC_HOME/calibration/<model id>.json.

    `locator_options` (k, aggregator, top_cells, head) should be those the answers will be made with.
    `data` says in words which photos these are; `default=True` marks the file as geoloc's shipped default
    (answers then say calibration "default")."""
    settings = {**LOCATOR_DEFAULTS, **locator_options}
    answers = out_of_fold(features, bundle, folds=folds, seed=seed, progress=progress, **settings)
    model_id = bundle.model_id if bundle is not None else features.model_id
    calibrator = fit_cross_validated(
        signal_matrix(answers.signals), answers.errors, answers.photographers, folds=folds,
        default=default, model_id=model_id, bundle_id=bundle.bundle_id if bundle is not None else None,
        settings={**settings, "folds": folds, "seed": seed},
        data=data, photographers=int(len(set(answers.photographers.tolist()))))
    if out is None:
        out = Path(bundle.path) / BUNDLE_FILE if bundle is not None else \
            calibrator_path(home if home is not None else Settings().home, model_id)
    return calibrator, calibrator.save(out)
