"""Residual Retrieval Module and its contrastive training pieces (paper section 3.3).

Photos of the same cell are positives, photos of other cells negatives. Negatives come from the batch
and from a cross-batch memory bank of past embeddings; anything of the query's own cell, in the batch
or in the bank, is masked out rather than counted as a negative.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class RRM(nn.Module):
    """LayerNorm -> Linear(D, Dh) -> ReLU -> Linear(Dh, D) -> + residual -> LayerNorm -> L2 (Fig. 2).

    The residual is added to the normalised input. The last linear layer starts at zero, so an
    untrained module is the (normalised) backbone feature itself and training only learns what to add:
    the paper's premise that the backbone vectors are already good representations.

    Training runs the residual centred over the batch (`centred=True`). A vector added to every photo
    alike says nothing about any photo, yet under InfoNCE's fixed temperature it is the cheapest way to
    lower the loss wherever cells are hard to tell apart: pushing every similarity toward 1 makes the
    softmax uniform, and the space collapses (every nearest neighbour at ~0.998). Centred, the residual
    can only add what differs between photos. `centre_residual` then folds the mean over the training
    photos into the last bias, so the module saved and served is the plain block above.
    """

    def __init__(self, dim: int = 1280, hidden: int = 4096):
        super().__init__()
        self.norm_in = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        self.norm_out = nn.LayerNorm(dim)
        nn.init.zeros_(self.ffn[2].weight)
        nn.init.zeros_(self.ffn[2].bias)

    @property
    def dim(self) -> int:
        return self.norm_in.normalized_shape[0]

    @property
    def hidden(self) -> int:
        return self.ffn[0].out_features

    def forward(self, features: torch.Tensor, centred: bool = False) -> torch.Tensor:
        x = self.norm_in(features)
        residual = self.ffn(x)
        if centred:
            residual = residual - residual.mean(dim=0)
        return F.normalize(self.norm_out(x + residual), dim=-1)

    @torch.no_grad()
    def centre_residual(self, features: torch.Tensor, batch: int = 4096) -> None:
        """Shift the last bias so that the residual averages zero over `features` (the training photos):
        the plain forward then embeds them as the centred one does."""
        device = self.ffn[2].bias.device
        total = sum(self.ffn(self.norm_in(rows.to(device))).sum(dim=0) for rows in features.split(batch))
        self.ffn[2].bias -= total / len(features)


class MemoryBank:
    """FIFO of the last `size` embeddings (detached) and their cells."""

    def __init__(self, size: int = 4096):
        self.size = size
        self.embeddings: torch.Tensor | None = None
        self.cells: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.cells is None else len(self.cells)

    def enqueue(self, embeddings: torch.Tensor, cells: torch.Tensor) -> None:
        embeddings, cells = embeddings.detach(), cells.detach()
        if self.cells is not None:
            embeddings = torch.cat([self.embeddings, embeddings])
            cells = torch.cat([self.cells, cells])
        start = max(0, len(cells) - self.size)
        self.embeddings, self.cells = embeddings[start:], cells[start:]


def info_nce(
    queries: torch.Tensor,
    positives: torch.Tensor,
    cells: torch.Tensor,
    bank: MemoryBank | None = None,
    tau: float = 0.05,
) -> torch.Tensor:
    """Mean InfoNCE (eq. 3) over the pairs (queries[i], positives[i]) of cell cells[i].

    Candidates for query i: its own positive, the other pairs' positives and the bank. Candidates of
    cell cells[i] other than its own positive are masked: they are not negatives."""
    candidates, candidate_cells = positives, cells
    if bank is not None and len(bank):
        candidates = torch.cat([positives, bank.embeddings])
        candidate_cells = torch.cat([cells, bank.cells])
    logits = queries @ candidates.T / tau
    own = torch.arange(len(queries), device=queries.device)
    same_cell = cells[:, None] == candidate_cells[None, :]
    same_cell[own, own] = False
    logits = logits.masked_fill(same_cell, float("-inf"))
    return F.cross_entropy(logits, own)


class CellPairSampler:
    """One (query, positive) pair of two distinct photos per cell per epoch, so large cells do not
    dominate (3.3.2). Cells with a single photo are skipped: they have no positive, and pairing a
    photo with itself would only teach the module to be the identity."""

    def __init__(self, cells: np.ndarray, seed: int = 0):
        groups = defaultdict(list)
        for index, cell in enumerate(np.asarray(cells).tolist()):
            if cell >= 0:
                groups[cell].append(index)
        self.groups = {cell: np.array(ix) for cell, ix in sorted(groups.items()) if len(ix) >= 2}
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.groups)

    def epoch(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query indices, positive indices, cells), one row per cell, in a fresh random order."""
        cells = np.array(list(self.groups), dtype=np.int64)
        self.rng.shuffle(cells)
        pairs = np.array([self.rng.choice(self.groups[c], size=2, replace=False) for c in cells])
        return pairs[:, 0], pairs[:, 1], cells
