"""Real model bundles whose weights are set, not trained, so that what their classifier answers is known.

The bundle is saved and loaded back through models.bundle like any other: a real hierarchy, a CE head
(the default) with zero weights and a bias of log p, so every photo gets the fine-cell probabilities p
whatever it shows, and an RRM whose feed-forward layers are zero, so it returns the normalised backbone
feature (see models.rrm) and its weights, hence the bundle's model id, are the same on every run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from geoloc.models.bundle import Bundle, save_bundle
from geoloc.models.heads import make_head
from geoloc.models.partition import Hierarchy
from geoloc.models.rrm import RRM


def cell_probabilities(n_cells: int, chosen: dict[int, float]) -> np.ndarray:
    """Probabilities over `n_cells` fine cells: `chosen` ({cell: probability}), the rest of the mass
    shared evenly by the other cells, each of which must get some."""
    probs = np.zeros(n_cells)
    for cell, p in chosen.items():
        probs[cell] = p
    others = np.setdiff1d(np.arange(n_cells), list(chosen))
    probs[others] = (1.0 - sum(chosen.values())) / max(len(others), 1)
    if not (np.all(probs > 0) and np.isclose(probs.sum(), 1.0)):
        raise ValueError(f"not a distribution with every cell possible: {probs}")
    return probs


def constructed_bundle(directory: str | Path, backbone, hierarchy: Hierarchy, probs, rrm_hidden: int = 8) -> Bundle:
    """A bundle for `backbone` over `hierarchy` whose default head ("ce") gives every photo `probs`,
    written to `directory` and returned as read back from it (load_bundle, checksums verified)."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != (len(hierarchy.fine),):
        raise ValueError(f"need one probability per fine cell ({len(hierarchy.fine)}), got {probs.shape}")
    head = make_head("ce", backbone.dim, hierarchy)
    rrm = RRM(backbone.dim, rrm_hidden)
    with torch.no_grad():
        head.fc.weight.zero_()
        head.fc.bias.copy_(torch.from_numpy(np.log(probs)))
        for parameter in rrm.ffn.parameters():
            parameter.zero_()
    return save_bundle(directory, hierarchy=hierarchy, heads={"ce": head}, rrm=rrm, backbone_name=backbone.name,
                       backbone_model_id=backbone.model_id, preprocessing=dict(backbone.data_config),
                       default_head="ce")
