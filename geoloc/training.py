"""Training orchestration: one feature cache -> partitions sized to it -> heads -> RRM -> a saved bundle.

The trainers themselves work on plain arrays (geoloc.models.train); this module decides what to train
from a FeatureSet and with which defaults, and writes the result as one bundle.
"""

from __future__ import annotations

import numpy as np

from geoloc.features import FeatureSet
from geoloc.models.bundle import Bundle, save_bundle
from geoloc.models.heads import HEADS
from geoloc.models.partition import Hierarchy, adaptive_hierarchy
from geoloc.models.train import train_heads, train_rrm

PAPER_FINE_CELLS = 32768  # the paper's fine partition, for 4.5M photos
PHOTOS_PER_FINE_CELL = 25


def build_hierarchy(lat, lon) -> Hierarchy:
    """Coarse/middle/fine partitions sized to the data: about 25 photos per fine cell (capped at the
    paper's 32,768 cells, ~140 photos per cell at its 4.5M photos), middle and coarse 3x and 9x coarser
    (close to the HC paper's ratios), and cells under an eighth of the mean size dropped (3 photos for a
    few thousand photos)."""
    n = len(np.asarray(lat))
    n_fine = int(np.clip(n // PHOTOS_PER_FINE_CELL, 1, PAPER_FINE_CELLS))
    targets = (max(1, n_fine // 9), max(1, n_fine // 3), n_fine)
    return adaptive_hierarchy(lat, lon, targets, min_per_cell=max(2, round(n / n_fine / 8)))


def train_bundle(
    features: FeatureSet,
    directory,
    *,
    kinds=HEADS.names(),
    preprocessing: dict | None = None,
    seed: int = 0,
    device: str = "auto",
) -> Bundle:
    """Train the hierarchy, the heads of `kinds` and the RRM on one feature cache, with the defaults
    above, and save them as a bundle in `directory` (returned loaded).

    The default head is MvMF when trained (the paper's best with the RRM), else the first of `kinds`.
    The backbone name is the part of the cache's model id before ':' (the Backbone's own format);
    `preprocessing` should be the backbone's eval transform (its data config) when at hand."""
    columns = (features.features, features.lat, features.lon, features.photographers)
    hierarchy = build_hierarchy(features.lat, features.lon)
    heads, metrics = {}, {}
    for kind in kinds:
        heads[kind], metrics[kind] = train_heads(*columns, hierarchy, kind, seed=seed, device=device)
    rrm, metrics["rrm"] = train_rrm(*columns, hierarchy.fine, seed=seed, device=device)
    backbone_name = features.model_id.split(":")[0]
    return save_bundle(
        directory,
        hierarchy=hierarchy,
        heads=heads,
        rrm=rrm,
        backbone_name=backbone_name,
        backbone_model_id=features.model_id,
        preprocessing=preprocessing or {"backbone": backbone_name, "transform": "the backbone's eval transform"},
        metrics=metrics,
        default_head="mvmf" if "mvmf" in heads else None,
    )
