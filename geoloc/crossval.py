"""`geoloc eval`: photographer-disjoint k-fold evaluation of every method on a labelled feature cache.

For each fold the classifier heads, the RRM and the gallery come from the other folds only, and the
fold's photos are the queries. Every retrieval method goes through the same Locator that serves users,
over real embedded Qdrant galleries, so the figures measure the product, not a re-implementation.
The same machinery gives the out-of-fold answers a calibrator is fitted on (out_of_fold), and the eval
scores each method's calibrated probabilities, themselves out-of-fold: each photo's from a calibrator
fitted without its photographer.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geoloc.calibration import RADII_KM, cross_val_probabilities, default_calibrator, signal_matrix, within
from geoloc.gallery.base import GalleryPoint, make_payload
from geoloc.gallery.edge import EdgeGallery
from geoloc.embedding import Embedder
from geoloc.evaluation import THRESHOLDS_KM, accuracy, calibration_metrics, errors_km, photographer_folds
from geoloc.features import FeatureSet
from geoloc.locate import Locator
from geoloc.ingest.records import PHOTOGRAPHER, point_id
from geoloc.models.heads import HEADS

K_ABLATION = (1, 5, 10, 15, 20)
SELECTIVE_RADII_KM = (25, 2500)
AGGREGATION_ABLATION = ("mean", "kde", "cluster", "witnesses")


@dataclass
class CachedBackbone:
    """Stands in for the backbone when features were extracted beforehand."""

    model_id: str
    dim: int

    def features(self, images):
        raise RuntimeError("evaluation runs on cached features")


def _gallery(path: Path, embedder: Embedder, train: FeatureSet) -> EdgeGallery:
    gallery = EdgeGallery(path, embedder.dim)
    vectors = embedder.vectors(train.features)
    gallery.upsert([GalleryPoint(point_id("eval", sha), v,
                                 make_payload("eval", la, lo, src, embedder.model_id, sha, {PHOTOGRAPHER: who}))
                    for sha, v, la, lo, src, who in zip(train.sha256, vectors, train.lat, train.lon, train.sources,
                                                        train.photographers)])
    return gallery


def _retrieval(embedder: Embedder, gallery, **options) -> Callable:
    """predict(features) -> ((n, 2) lat/lon, each answer's signals), through the product's Locator."""
    locator = Locator(embedder, gallery, calibrator=default_calibrator(), **options)

    def predict(feats):
        answers = locator.locate_features(feats)
        return np.array([(a.lat, a.lon) for a in answers]).reshape(-1, 2), [a.signals for a in answers]
    return predict


def _methods(bundle, raw: Embedder, raw_gallery, swc: Embedder, rrm_gallery) -> dict[str, tuple[str, Callable]]:
    """name -> (table, predict(features) -> ((n, 2) lat/lon, signals or None))."""
    fine = bundle.hierarchy.fine
    densest = fine.centres[int(np.argmax(fine.counts))]

    def classify(head):
        return lambda feats: (fine.centres[np.argmax(bundle.cell_log_probs(feats, head=head), axis=1)], None)

    def swc_locator(head="mvmf", **options):
        return _retrieval(swc, rrm_gallery, head=head, **options)

    methods = {
        "densest cell (constant)": ("main", lambda feats: (np.tile(densest, (len(feats), 1)), None)),
        "NN, backbone features": ("main", _retrieval(raw, raw_gallery, k=1, aggregator="nn")),
        "kNN density, backbone features (K=10)": ("main", _retrieval(raw, raw_gallery, aggregator="kde")),
        "backbone retrieval, DBSCAN (K=10)": ("main", _retrieval(raw, raw_gallery)),
        "backbone retrieval, witnesses (K=10, 50 nearest)": ("main", _retrieval(raw, raw_gallery,
                                                                                aggregator="witnesses")),
    }
    for head in HEADS:
        methods[f"{head.upper()} cell centre"] = ("main", classify(head))
    methods["RRM retrieval, NN"] = ("main", _retrieval(swc, rrm_gallery, k=1, aggregator="nn", within_cell=False))
    for head in HEADS:
        methods[f"SwC {head.upper()} + RRM (K=10, DBSCAN)"] = ("main", swc_locator(head))
    methods["SwC MVMF, top 3 cells weighted"] = ("main", swc_locator(top_cells=3))
    for k in K_ABLATION:
        methods[f"SwC MVMF, K={k}"] = ("k", swc_locator(k=k))
    for aggregator in AGGREGATION_ABLATION:
        methods[f"SwC MVMF, {aggregator}"] = ("aggregation", swc_locator(aggregator=aggregator))
    return methods


def _fold_of(features: FeatureSet, folds: int, seed: int) -> np.ndarray:
    if np.any(features.photographers == ""):
        raise ValueError("evaluation splits by photographer: the feature file needs a 'photographer' column")
    return photographer_folds(features.photographers, folds, seed)


def _cached(features: FeatureSet, bundle=None) -> Embedder:
    return Embedder(CachedBackbone(features.model_id, features.features.shape[1]), bundle)


@dataclass
class OutOfFold:
    """Each photo located against a gallery of the other folds (no photographer on both sides), fold by fold."""

    rows: np.ndarray  # the photo's row in the feature set
    errors: np.ndarray  # km from the truth
    signals: list[dict[str, float]]
    photographers: np.ndarray
    answers: np.ndarray  # (n, 2) lat/lon answered
    folds: np.ndarray  # the fold each photo was located in: the gallery held every other fold


def out_of_fold(features: FeatureSet, bundle=None, folds: int = 5, seed: int = 0, work_dir: Path | None = None,
                progress: Callable[[str], None] = print, **locator_options) -> OutOfFold:
    """Out-of-fold answers, their signals and errors; with `bundle`, galleries of its RRM embeddings and
    its classifier's cells. The bundle should not have been trained on these photos (its classifier
    would look surer than it is on new ones)."""
    if bundle is not None and bundle.backbone_model_id != features.model_id:
        raise ValueError(f"the bundle was trained on backbone '{bundle.backbone_model_id}', but the features "
                         f"come from '{features.model_id}'")
    fold_of, embedder = _fold_of(features, folds, seed), _cached(features, bundle)
    rows, errors, signals, answers = [], [], [], []
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        for fold in range(folds):
            train, test = features.subset(fold_of != fold), features.subset(fold_of == fold)
            progress(f"fold {fold + 1}/{folds}: a gallery of {len(train)} photos, locating {len(test)}")
            with _gallery(Path(tmp) / f"fold-{fold}", embedder, train) as gallery:
                coords, fold_signals = _retrieval(embedder, gallery, **locator_options)(test.features)
            rows.append(np.flatnonzero(fold_of == fold))
            errors.append(errors_km(coords[:, 0], coords[:, 1], test.lat, test.lon))
            signals += fold_signals
            answers.append(coords)
    rows = np.concatenate(rows)
    return OutOfFold(rows, np.concatenate(errors), signals, features.photographers[rows], np.concatenate(answers),
                     fold_of[rows])


def _calibrated(signals: list[dict], errors: np.ndarray, photographers: np.ndarray, folds: int) -> dict:
    """Scores of one method's calibrated probabilities, each from a calibrator without its photographer."""
    probs = cross_val_probabilities(signal_matrix(signals), errors, photographers, folds)
    return calibration_metrics(probs, within(errors), RADII_KM)


def cross_validate(features: FeatureSet, folds: int = 5, seed: int = 0, work_dir: Path | None = None,
                   progress: Callable[[str], None] = print) -> dict:
    """Per-method errors over all folds, accuracy tables, calibration scores of the methods that answer
    with signals, and the training metrics of each fold."""
    from geoloc.training import train_bundle

    fold_of = _fold_of(features, folds, seed)
    errors: dict[str, list[np.ndarray]] = {}
    signals: dict[str, list[dict]] = {}
    tables: dict[str, str] = {}
    training, rows = [], []
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        for fold in range(folds):
            train, test = features.subset(fold_of != fold), features.subset(fold_of == fold)
            progress(f"fold {fold + 1}/{folds}: training on {len(train)} photos, querying {len(test)}")
            bundle = train_bundle(train, Path(tmp) / f"bundle-{fold}", kinds=HEADS, seed=seed)
            training.append(bundle.manifest["metrics"])
            rows.append(np.flatnonzero(fold_of == fold))
            raw, swc = _cached(features), _cached(features, bundle)
            with _gallery(Path(tmp) / f"raw-{fold}", raw, train) as raw_gallery, \
                    _gallery(Path(tmp) / f"rrm-{fold}", swc, train) as rrm_gallery:
                for name, (table, predict) in _methods(bundle, raw, raw_gallery, swc, rrm_gallery).items():
                    pred, answer_signals = predict(test.features)
                    errors.setdefault(name, []).append(errors_km(pred[:, 0], pred[:, 1], test.lat, test.lon))
                    if answer_signals is not None:
                        signals.setdefault(name, []).extend(answer_signals)
                    tables[name] = table
    photographers = features.photographers[np.concatenate(rows)]
    results = {}
    for name, parts in errors.items():
        merged = np.concatenate(parts)
        results[name] = {"table": tables[name], **accuracy(merged)}
        if name in signals:
            results[name]["calibrated"] = _calibrated(signals[name], merged, photographers, folds)
    return {"folds": folds, "seed": seed, "photos": len(features), "model": features.model_id,
            "photographers": int(len(np.unique(features.photographers))), "results": results,
            "training": training}


def markdown(report: dict) -> str:
    """The accuracy tables of a report, one per part (main comparison, K ablation, aggregation)."""
    titles = {"main": "Methods", "k": "SwC MvMF: neighbours K (DBSCAN)", "aggregation": "SwC MvMF: aggregation (K=10)"}
    columns = [f"{t:g}km" for t in THRESHOLDS_KM]
    lines = [f"{report['photos']} photos of {report['photographers']} photographers, {report['folds']}-fold "
             f"cross-validation by photographer (seed {report['seed']}); backbone {report['model']}. "
             "Accuracy in % within each distance; median error in km."]
    for part, title in titles.items():
        lines += ["", f"**{title}**", "",
                  "| method | " + " | ".join(c.replace("km", " km") for c in columns) + " | median km |",
                  "|---|" + "---|" * (len(columns) + 1)]
        for name, row in report["results"].items():
            if row["table"] == part:
                lines.append(f"| {name} | " + " | ".join(f"{row[c]:.1f}" for c in columns)
                             + f" | {row['median_km']:,.0f} |")
    return "\n".join(lines + _confidence_lines(report)) + "\n"


def _confidence_lines(report: dict) -> list[str]:
    """Selective accuracy (answers ranked by their own radius's probability) and calibration error."""
    rows = [(name, row["calibrated"]) for name, row in report["results"].items() if "calibrated" in row]
    if not rows:
        return []
    fractions = list(rows[0][1]["selective"]["25km"])
    head = [f"{r:g} km: top {f}" for r in SELECTIVE_RADII_KM for f in fractions]
    lines = ["", "**Confidence: calibrated probabilities, out-of-fold** (each photo's from a calibrator fitted "
             "without its photographer). % of answers within the distance among the most confident fraction, "
             "ranked by their probability of being within it; lift = top 10% over all; calibration error "
             "(10 equal-width bins) of the probability of being within each radius.", "",
             "| method | " + " | ".join(head) + " | lift 25 km | " + " | ".join(f"error {r:g} km" for r in RADII_KM)
             + " |", "|---|" + "---|" * (len(head) + 1 + len(RADII_KM))]
    for name, cal in rows:
        selective = [cal["selective"][f"{r:g}km"][f] for r in SELECTIVE_RADII_KM for f in fractions]
        top, overall = cal["selective"]["25km"]["10%"], cal["selective"]["25km"]["100%"]
        lift = f"{top / overall:.1f}x" if overall else "n/a"
        lines.append(f"| {name} | " + " | ".join(f"{v:.1f}" for v in selective) + f" | {lift} | "
                     + " | ".join(f"{cal['calibration_error'][f'{r:g}km']:.3f}" for r in RADII_KM) + " |")
    return lines


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    main = [(name, row) for name, row in report["results"].items() if row["table"] == "main"]
    for i, (name, row) in enumerate(main):
        ax.plot(THRESHOLDS_KM, [row[f"{t:g}km"] for t in THRESHOLDS_KM], marker="o", label=name,
                color=plt.cm.tab20(i % 20), linestyle=("-", "--")[i % 2])
    ax.set_xscale("log")
    ax.set_xlabel("distance to the true location (km)")
    ax.set_ylabel("photos located within (%)")
    ax.set_title(f"{report['photos']} photos, {report['folds']}-fold by photographer")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_reliability(report: dict, path: Path) -> None:
    """Reliability diagrams, one per radius: stated probability against observed frequency (deciles)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(RADII_KM), figsize=(4 * len(RADII_KM), 4.2))
    rows = [(n, r["calibrated"]) for n, r in report["results"].items() if r["table"] == "main" and "calibrated" in r]
    for ax, radius in zip(axes, RADII_KM):
        top = 0.0
        for i, (name, cal) in enumerate(rows):
            curve = cal["reliability"][f"{radius:g}km"]
            ax.plot(curve["probability"], curve["frequency"], marker="o", markersize=3, label=name,
                    color=plt.cm.tab10(i % 10))
            top = max(top, *curve["probability"], *curve["frequency"])
        top = min(1.0, 1.05 * top) or 1.0
        ax.plot([0, top], [0, top], color="grey", linestyle=":", linewidth=1)
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.set_title(f"within {radius:g} km")
        ax.set_xlabel("stated probability (decile mean)")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("observed frequency")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Out-of-fold calibration, {report['photos']} photos, {report['folds']}-fold by photographer")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: dict, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out_dir / "eval.md", "json": out_dir / "eval.json", "plot": out_dir / "eval.png",
             "reliability": out_dir / "eval-reliability.png"}
    paths["markdown"].write_text(markdown(report))
    paths["json"].write_text(json.dumps(report, indent=2))
    plot(report, paths["plot"])
    plot_reliability(report, paths["reliability"])
    return paths
