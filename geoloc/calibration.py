"""How likely an answer is to lie within 1, 25, 200, 750 and 2,500 km of the truth.

An answer's own signals (how similar its neighbours are, how well they agree on the place, and with a
model bundle how sure the classifier is) feed one logistic regression per radius, fitted on out-of-fold
answers of labelled photos: no photographer is both in the gallery and among the queries, so the
probabilities are those of photos the gallery has never seen a shot of. Signals an answer lacks (no
bundle, an empty cell) take a fixed value and raise an indicator, so one model serves every answer.

A calibrator is one JSON file (no pickles): signal names, scaler, coefficients, the model id it was fitted
for, its size, date and cross-validated metrics. geoloc ships a default one, fitted on the im2gps3k-dev
photos with the default backbone and plain retrieval (K=10, DBSCAN); answers made with it say
`calibration: "default"`, so a user knows to fit one on their own gallery and photos.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.resources import files
from pathlib import Path

import numpy as np

from geoloc.evaluation import calibration_metrics

RADII_KM = (1, 25, 200, 750, 2500)
AGREEMENT_KM = (25, 200, 750, 2500)
_AGREEMENT = np.array(AGREEMENT_KM, dtype=np.float64)
NEIGHBOUR_SIGNALS = ("sim_top1", "sim_margin", "sim_range", "sim_mean", "sim_support", "support_margin",
                     *(f"agree_{r}km" for r in AGREEMENT_KM), "cluster_fraction", "support_log_km",
                     "photographers_25km")
CELL_SIGNALS = ("cell_top", "cell_margin", "cell_entropy")
SIGNALS = (*NEIGHBOUR_SIGNALS, "no_neighbours", *CELL_SIGNALS, "no_cells")
NO_CELLS = {**dict.fromkeys(CELL_SIGNALS, 0.0), "no_cells": 1.0}
FORMAT, VERSION = "geoloc.calibrator", 1
BUNDLE_FILE = "calibration.json"  # a bundle's own calibrator, beside bundle.json
DEFAULT_ID = "default"
_DEFAULT_RESOURCE = "default_calibration.json"


class CalibrationError(ValueError):
    """A calibrator file that is missing, damaged or of another format."""


def answer_signals(similarities, km_to_answer, support, photographers: int = 0) -> dict[str, float]:
    """Signals of an answer from its K neighbours: similarities, distances to the answer, and the indices
    of the neighbours it rests on; `photographers`, how many people took the nearest photos (the locator's
    aggregation.Pool) that lie within 25 km of the answer. Cell signals start absent (see cell_signals).

    `sim_support` and `support_margin` speak of the photos the answer rests on: the best of them, and how
    much more similar it is than the best photo the answer sets aside (a near-duplicate of the query that
    the aggregation outvotes must not make the answer look sure)."""
    raw = np.asarray(similarities, dtype=np.float64)
    s = np.sort(raw)[::-1]
    km = np.asarray(km_to_answer, dtype=np.float64)
    if s.size == 0:
        return {**dict.fromkeys(NEIGHBOUR_SIGNALS, 0.0), "no_neighbours": 1.0, **NO_CELLS}
    rests_on = np.zeros(s.size, dtype=bool)
    rests_on[np.asarray(support, dtype=np.int64)] = True
    best_for = raw[rests_on].max()
    best_against = raw[~rests_on].max() if (~rests_on).any() else s[-1]
    signals = {"sim_top1": s[0], "sim_margin": s[0] - s[1] if s.size > 1 else 0.0, "sim_range": s[0] - s[-1],
               "sim_mean": s.mean(), "sim_support": best_for, "support_margin": best_for - best_against,
               **dict(zip((f"agree_{r}km" for r in AGREEMENT_KM), (km[:, None] <= _AGREEMENT).mean(axis=0))),
               "cluster_fraction": len(support) / s.size,
               "support_log_km": math.log1p(statistics.median(km[rests_on].tolist())),  # numpy's: 50 us here
               "photographers_25km": math.log1p(photographers),
               "no_neighbours": 0.0, **NO_CELLS}
    return {name: float(value) for name, value in signals.items()}


def cell_signals(probs) -> dict[str, float]:
    """The classifier's certainty: top cell probability, its margin over the second, normalised entropy."""
    p = np.asarray(probs, dtype=np.float64)
    top = np.sort(p)[::-1]
    entropy = -np.sum(p * np.log(np.clip(p, 1e-300, None))) / np.log(p.size) if p.size > 1 else 0.0
    return {"cell_top": float(top[0]), "cell_margin": float(top[0] - (top[1] if p.size > 1 else 0.0)),
            "cell_entropy": float(entropy), "no_cells": 0.0}


def signal_matrix(rows: list[dict[str, float]], names=SIGNALS) -> np.ndarray:
    return np.array([[row[name] for name in names] for row in rows], dtype=np.float64).reshape(len(rows), len(names))


def within(errors_km) -> np.ndarray:
    """(n, radii) booleans: the answer lies within each radius of the truth."""
    return np.asarray(errors_km, dtype=np.float64)[:, None] <= np.array(RADII_KM, dtype=np.float64)[None, :]


def uncertainty_km(probabilities) -> float | None:
    """The smallest radius the answer is more likely than not within; None when there is none."""
    for radius, p in zip(RADII_KM, probabilities):
        if p >= 0.5:
            return float(radius)
    return None


@dataclass
class Calibrator:
    signals: tuple[str, ...]
    mean: np.ndarray  # scaler
    scale: np.ndarray
    coef: np.ndarray  # (radii, signals) on standardised signals
    intercept: np.ndarray  # (radii,)
    info: dict = field(default_factory=dict)  # model_id, bundle_id, n, fitted, settings, metrics, default
    # each signal's lowest and highest value in the fit: an answer's signals are clipped to them, so a value
    # the fit never saw (a far denser gallery) cannot push a probability past what the fit measured
    bounds: tuple[np.ndarray, np.ndarray] | None = None

    @functools.cached_property
    def id(self) -> str:
        """"default" for the shipped calibrator, else a digest of the file's content (once: 0.2 ms)."""
        if self.info.get("default"):
            return DEFAULT_ID
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def fits(self, model_id: str, bundle_id: str | None) -> bool:
        """Fitted for this embedding model and, with a bundle, these very heads."""
        return self.info.get("model_id") == model_id and self.info.get("bundle_id") == bundle_id

    def predict(self, signals: np.ndarray) -> np.ndarray:
        """(n, radii) probabilities of being within each radius, non-decreasing in the radius."""
        x = np.asarray(signals, dtype=np.float64)
        if self.bounds is not None:
            x = np.clip(x, *self.bounds)
        z = (x - self.mean) / self.scale
        logits = np.clip(z @ self.coef.T + self.intercept, -500, 500)
        return np.maximum.accumulate(1.0 / (1.0 + np.exp(-logits)), axis=1)

    def predict_answers(self, rows: list[dict[str, float]]) -> np.ndarray:
        return self.predict(signal_matrix(rows, self.signals))

    def to_dict(self) -> dict:
        bounds = {"low": self.bounds[0].tolist(), "high": self.bounds[1].tolist()} if self.bounds else {}
        return {"format": FORMAT, "version": VERSION, "radii_km": list(RADII_KM), "signals": list(self.signals),
                "scaler": {"mean": self.mean.tolist(), "scale": self.scale.tolist(), **bounds},
                "coefficients": {f"{r:g}": {"coef": c.tolist(), "intercept": float(b)}
                                 for r, c, b in zip(RADII_KM, self.coef, self.intercept)},
                **self.info}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(path.name + ".tmp")
        staging.write_text(json.dumps(self.to_dict(), indent=1))
        staging.replace(path)
        return path


C_GRID = (0.01, 0.1, 1.0)  # inverse L2 strengths a radius's model chooses among (1.0: the fixed default)
INNER_FOLDS = 5


def fit(signals: np.ndarray, errors_km, groups=None, names=SIGNALS, **info) -> Calibrator:
    """One L2-regularised logistic regression per radius on standardised signals (scikit-learn). A radius
    that every answer (or none) reaches gets the smoothed rate as a constant.

    With `groups` (photographers), each radius picks its regularisation from C_GRID by the log-loss of an
    inner cross-validation that keeps each group on one side, so the strength suits photos by people the
    fit never saw (fewer answers or rarer hits: stronger); without them, or with too few groups or hits
    to split, C=1."""
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(signals, dtype=np.float64)
    scaler = StandardScaler().fit(x)
    z = scaler.transform(x)
    coef, intercept = np.zeros((len(RADII_KM), x.shape[1])), np.zeros(len(RADII_KM))
    chosen = {}
    for j, y in enumerate(within(errors_km).T):
        if y.all() or not y.any():
            rate = (y.sum() + 0.5) / (y.size + 1.0)
            intercept[j] = np.log(rate / (1.0 - rate))
            continue
        model, chosen[f"{RADII_KM[j]:g}"] = _regression(z, y, groups)
        coef[j], intercept[j] = model.coef_[0], model.intercept_[0]
    info = {**info, "n": int(x.shape[0]), "regularisation_c": chosen}
    return Calibrator(tuple(names), scaler.mean_, scaler.scale_, coef, intercept, info, (x.min(axis=0), x.max(axis=0)))


def _regression(z: np.ndarray, y: np.ndarray, groups) -> tuple:
    """The fitted logistic regression and its C (chosen by grouped inner cross-validation when possible)."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedGroupKFold

    folds = 0 if groups is None else min(INNER_FOLDS, int(y.sum()), int((~y).sum()), len(np.unique(groups)))
    splits = list(StratifiedGroupKFold(n_splits=folds).split(z, y, groups)) if folds >= 2 else []
    if not splits or any(len(np.unique(y[train])) < 2 for train, _ in splits):
        return LogisticRegression(C=1.0, max_iter=2000).fit(z, y), 1.0
    # one regularisation path per fold (warm-started); a held-out part without hits still scores
    model = LogisticRegressionCV(Cs=list(C_GRID), cv=splits, scoring="neg_log_loss", l1_ratios=(0.0,),
                                 use_legacy_attributes=False, max_iter=2000).fit(z, y)
    return model, float(model.C_)


def cross_val_probabilities(signals: np.ndarray, errors_km, groups, folds: int = 5) -> np.ndarray:
    """Each answer's probabilities from a calibrator fitted without its group (photographer)."""
    from sklearn.model_selection import GroupKFold

    x, errors = np.asarray(signals, dtype=np.float64), np.asarray(errors_km, dtype=np.float64)
    groups = np.asarray(groups)
    out = np.zeros((len(errors), len(RADII_KM)))
    splits = GroupKFold(n_splits=min(folds, len(np.unique(groups))))
    for train, test in splits.split(x, errors, groups):
        out[test] = fit(x[train], errors[train], groups[train]).predict(x[test])
    return out


def fit_cross_validated(signals: np.ndarray, errors_km, groups, folds: int = 5, **info) -> Calibrator:
    """A calibrator on all answers, carrying the metrics of its photographer-disjoint cross-validation."""
    oof = cross_val_probabilities(signals, errors_km, groups, folds)
    stamp = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    metrics = calibration_metrics(oof, within(errors_km), RADII_KM)
    return fit(signals, errors_km, groups, **info, fitted=stamp, cross_validation={"folds": folds, **metrics})


def from_dict(data: dict, origin: str = "calibrator") -> Calibrator:
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
        raise CalibrationError(f"{origin}: not a {FORMAT} version {VERSION} file")
    try:
        names = tuple(data["signals"])
        unknown = set(names) - set(SIGNALS)
        if unknown or list(data["radii_km"]) != list(RADII_KM):
            raise CalibrationError(f"{origin}: unknown signals {sorted(unknown)} or radii {data['radii_km']}")
        rows = [data["coefficients"][f"{r:g}"] for r in RADII_KM]
        parts = (np.array(data["scaler"]["mean"], float), np.array(data["scaler"]["scale"], float),
                 np.array([row["coef"] for row in rows], float), np.array([row["intercept"] for row in rows], float))
        scaler = data["scaler"]
        bounds = (np.array(scaler["low"], float), np.array(scaler["high"], float)) if "low" in scaler else None
    except (KeyError, TypeError, ValueError) as err:
        raise CalibrationError(f"{origin}: incomplete calibrator ({err!r})") from err
    if any(p.shape[-1] != len(names) for p in (*parts[:3], *(bounds or ()))) or parts[3].shape != (len(RADII_KM),):
        raise CalibrationError(f"{origin}: coefficients do not match its {len(names)} signals")
    skip = {"format", "version", "radii_km", "signals", "scaler", "coefficients"}
    return Calibrator(names, *parts, {k: v for k, v in data.items() if k not in skip}, bounds)


def load_calibrator(path: str | Path) -> Calibrator:
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as err:
        raise CalibrationError(f"{path}: cannot read calibrator ({err.strerror})") from None
    return _load_cached(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _load_cached(path: str, mtime_ns: int, size: int) -> Calibrator:
    """Keyed on the file's time and size: a refitted file is read again, an unchanged one only once."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CalibrationError(f"{path}: not a readable calibrator ({err})") from None
    return from_dict(data, path)


@functools.lru_cache(maxsize=1)
def default_calibrator() -> Calibrator:
    return from_dict(json.loads(files("geoloc").joinpath(_DEFAULT_RESOURCE).read_text()), DEFAULT_ID)


def calibrator_path(home: str | Path, model_id: str) -> Path:
    """Where a calibrator fitted for `model_id` lives beside the gallery."""
    return Path(home) / "calibration" / (re.sub(r"[^A-Za-z0-9._-]+", "_", model_id) + ".json")


def find_calibrator(model_id: str, bundle_id: str | None = None, bundle_path: str | Path | None = None,
                    home: str | Path | None = None) -> Calibrator:
    """The bundle's own calibrator, else the one fitted beside the gallery for this model (and bundle),
    else the default."""
    candidates = [Path(bundle_path) / BUNDLE_FILE] if bundle_path else []
    if home is not None:
        candidates.append(calibrator_path(home, model_id))
    for path in candidates:
        if path.is_file():
            calibrator = load_calibrator(path)
            if calibrator.fits(model_id, bundle_id):
                return calibrator
    return default_calibrator()
