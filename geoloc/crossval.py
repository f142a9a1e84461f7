"""`geoloc eval`: photographer-disjoint k-fold evaluation of every method on a labelled feature cache.

For each fold the classifier heads, the RRM and the gallery come from the other folds only, and the
fold's photos are the queries. Every retrieval method goes through the same Locator that serves users,
over real embedded Qdrant galleries, so the figures measure the product, not a re-implementation.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geoloc.gallery.base import GalleryPoint, make_payload
from geoloc.gallery.edge import EdgeGallery
from geoloc.embedding import Embedder
from geoloc.evaluation import THRESHOLDS_KM, accuracy, errors_km, photographer_folds
from geoloc.features import FeatureSet
from geoloc.locate import Locator
from geoloc.ingest.records import point_id
from geoloc.models.heads import HEADS

K_ABLATION = (1, 5, 10, 15, 20)
AGGREGATION_ABLATION = ("mean", "kde", "cluster")


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
                                 make_payload("eval", la, lo, src, embedder.model_id, sha))
                    for sha, v, la, lo, src in zip(train.sha256, vectors, train.lat, train.lon, train.sources)])
    return gallery


def _retrieval(locator: Locator) -> Callable[[np.ndarray], np.ndarray]:
    return lambda feats: np.array([(a.lat, a.lon) for a in locator.locate_features(feats)])


def _methods(bundle, raw: Embedder, raw_gallery, swc: Embedder, rrm_gallery) -> dict[str, tuple[str, Callable]]:
    """name -> (table, predict(features) -> (n, 2) lat/lon)."""
    fine = bundle.hierarchy.fine
    densest = fine.centres[int(np.argmax(fine.counts))]

    def classify(head):
        return lambda feats: fine.centres[np.argmax(bundle.cell_log_probs(feats, head=head), axis=1)]

    def swc_locator(head="mvmf", **options):
        return _retrieval(Locator(swc, rrm_gallery, head=head, **options))

    methods = {
        "densest cell (constant)": ("main", lambda feats: np.tile(densest, (len(feats), 1))),
        "NN, backbone features": ("main", _retrieval(Locator(raw, raw_gallery, k=1, aggregator="nn"))),
        "kNN density, backbone features (K=10)": ("main", _retrieval(Locator(raw, raw_gallery, aggregator="kde"))),
        "backbone retrieval, DBSCAN (K=10)": ("main", _retrieval(Locator(raw, raw_gallery))),
    }
    for head in HEADS:
        methods[f"{head.upper()} cell centre"] = ("main", classify(head))
    methods["RRM retrieval, NN"] = ("main", _retrieval(Locator(swc, rrm_gallery, k=1, aggregator="nn",
                                                               within_cell=False)))
    for head in HEADS:
        methods[f"SwC {head.upper()} + RRM (K=10, DBSCAN)"] = ("main", swc_locator(head))
    methods["SwC MVMF, top 3 cells weighted"] = ("main", swc_locator(top_cells=3))
    for k in K_ABLATION:
        methods[f"SwC MVMF, K={k}"] = ("k", swc_locator(k=k))
    for aggregator in AGGREGATION_ABLATION:
        methods[f"SwC MVMF, {aggregator}"] = ("aggregation", swc_locator(aggregator=aggregator))
    return methods


def cross_validate(features: FeatureSet, folds: int = 5, seed: int = 0, work_dir: Path | None = None,
                   progress: Callable[[str], None] = print) -> dict:
    """Per-method errors over all folds, accuracy tables and the training metrics of each fold."""
    from geoloc.training import train_bundle

    if np.any(features.photographers == ""):
        raise ValueError("evaluation splits by photographer: the feature file needs a 'photographer' column")
    fold_of = photographer_folds(features.photographers, folds, seed)
    errors: dict[str, list[np.ndarray]] = {}
    tables: dict[str, str] = {}
    training = []
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        for fold in range(folds):
            train, test = features.subset(fold_of != fold), features.subset(fold_of == fold)
            progress(f"fold {fold + 1}/{folds}: training on {len(train)} photos, querying {len(test)}")
            bundle = train_bundle(train, Path(tmp) / f"bundle-{fold}", kinds=HEADS, seed=seed)
            training.append(bundle.manifest["metrics"])
            raw = Embedder(CachedBackbone(features.model_id, features.features.shape[1]))
            swc = Embedder(CachedBackbone(features.model_id, features.features.shape[1]), bundle)
            with _gallery(Path(tmp) / f"raw-{fold}", raw, train) as raw_gallery, \
                    _gallery(Path(tmp) / f"rrm-{fold}", swc, train) as rrm_gallery:
                for name, (table, predict) in _methods(bundle, raw, raw_gallery, swc, rrm_gallery).items():
                    pred = predict(test.features)
                    errors.setdefault(name, []).append(errors_km(pred[:, 0], pred[:, 1], test.lat, test.lon))
                    tables[name] = table
    merged = {name: np.concatenate(e) for name, e in errors.items()}
    return {"folds": folds, "seed": seed, "photos": len(features), "model": features.model_id,
            "photographers": int(len(np.unique(features.photographers))),
            "results": {name: {"table": tables[name], **accuracy(e)} for name, e in merged.items()},
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
    return "\n".join(lines) + "\n"


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


def write_report(report: dict, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out_dir / "eval.md", "json": out_dir / "eval.json", "plot": out_dir / "eval.png"}
    paths["markdown"].write_text(markdown(report))
    paths["json"].write_text(json.dumps(report, indent=2))
    plot(report, paths["plot"])
    return paths
