"""Classification heads over cached backbone features (paper section 3.2).

Every head answers the same two questions, so the rest of the system never cares which one it has:
`loss(features, targets)` for training and `cell_log_probs(features) -> (n, n_fine)` for inference.
The point prediction of every head is the centre of its most probable fine cell; for MvMF that is the
mean of the highest-weight component, as in the paper, because components sit at the cell centres.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geoloc.models.partition import Hierarchy
from geoloc.registry import Registry

# head name -> builder(in_dim, hierarchy, dropout) of a freshly initialised head
HEADS: Registry = Registry("head")
_LOG_2PI = math.log(2 * math.pi)
_FACE_EDGE_RAD = math.sqrt(4 * math.pi / 6)  # edge of an S2 face seen as a square of 1/6 of the sphere


class Targets(NamedTuple):
    cell: torch.Tensor  # (n,) int64 fine cell index
    xyz: torch.Tensor  # (n, 3) unit vector of the true location (used by MvMF)


class CEHead(nn.Module):
    """PlaNet: one linear layer over the fine cells, cross-entropy loss (3.2.1)."""

    def __init__(self, in_dim: int, n_cells: int, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_dim, n_cells)

    def loss(self, features: torch.Tensor, targets: Targets) -> torch.Tensor:
        return F.cross_entropy(self.fc(self.dropout(features)), targets.cell)

    def cell_log_probs(self, features: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.fc(self.dropout(features)), dim=-1)


class HierarchicalHead(nn.Module):
    """HC (3.2.2): a CE head per partition; loss is the mean of the three cross-entropies."""

    def __init__(self, in_dim: int, n_cells: tuple[int, int, int], parent_middle, parent_coarse, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.coarse, self.middle, self.fine = (nn.Linear(in_dim, n) for n in n_cells)
        self.register_buffer("parent_middle", torch.as_tensor(np.asarray(parent_middle), dtype=torch.long))
        self.register_buffer("parent_coarse", torch.as_tensor(np.asarray(parent_coarse), dtype=torch.long))

    def _log_probs(self, features):
        x = self.dropout(features)
        return tuple(F.log_softmax(layer(x), dim=-1) for layer in (self.coarse, self.middle, self.fine))

    def loss(self, features: torch.Tensor, targets: Targets) -> torch.Tensor:
        coarse, middle, fine = self._log_probs(features)
        cell = targets.cell
        return (
            F.nll_loss(coarse, self.parent_coarse[cell])
            + F.nll_loss(middle, self.parent_middle[cell])
            + F.nll_loss(fine, cell)
        ) / 3

    def cell_log_probs(self, features: torch.Tensor) -> torch.Tensor:
        """p(fine) * p(middle parent) * p(coarse parent), renormalised over the fine cells so that it is
        a distribution (a confidence); renormalising leaves the paper's argmax unchanged."""
        coarse, middle, fine = self._log_probs(features)
        joint = fine + middle[:, self.parent_middle] + coarse[:, self.parent_coarse]
        return F.log_softmax(joint, dim=-1)


def log_vmf(xyz: torch.Tensor, mu: torch.Tensor, kappa: torch.Tensor) -> torch.Tensor:
    """log vMF(x | mu_j, kappa_j) on the unit sphere, shape (n, m), for x (n, 3), mu (m, 3), kappa (m,).

    The paper's constant kappa / (4 pi sinh kappa) is rewritten as
    log kappa - log 2pi - kappa - log1p(-exp(-2 kappa)) (sinh overflows past kappa ~ 710), with
    log1p(-exp(-2k)) computed as log(-expm1(-2k)) (exact for tiny kappa too), and
    kappa mu.x - kappa = -kappa |x - mu|^2 / 2, which keeps precision in float32 when kappa is ~1e6
    (cells of a few km) and x is close to mu.
    """
    sq_dist = torch.cdist(xyz, mu, compute_mode="donot_use_mm_for_euclid_dist").square()  # no x.mu cancellation
    log_norm = torch.log(kappa) - _LOG_2PI - torch.log(-torch.expm1(-2 * kappa))
    return log_norm - kappa * sq_dist / 2


class MvMFHead(nn.Module):
    """Mixture of von Mises-Fisher (3.2.3): a linear layer gives the mixture weights over the fine
    cells; component j is centred on cell j's centre (fixed) with a learned concentration that does
    not depend on the image. Trained by the negative log-likelihood of the true location."""

    def __init__(self, in_dim: int, centres_xyz, log_kappa, dropout: float = 0.1):
        super().__init__()
        centres = torch.as_tensor(np.asarray(centres_xyz), dtype=torch.float32)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_dim, len(centres))
        self.register_buffer("centres", centres)
        self.log_kappa = nn.Parameter(torch.as_tensor(np.asarray(log_kappa), dtype=torch.float32).clone())

    def log_density(self, features: torch.Tensor, xyz: torch.Tensor) -> torch.Tensor:
        """log MvMF(x | image) for each row, shape (n,)."""
        log_w = self.cell_log_probs(features)
        return torch.logsumexp(log_w + log_vmf(xyz, self.centres, self.log_kappa.exp()), dim=-1)

    def loss(self, features: torch.Tensor, targets: Targets) -> torch.Tensor:
        return -self.log_density(features, targets.xyz.to(features.dtype)).mean()

    def cell_log_probs(self, features: torch.Tensor) -> torch.Tensor:
        """The log mixture weights: the probability mass the model puts on each cell's component."""
        return F.log_softmax(self.fc(self.dropout(features)), dim=-1)


def initial_log_kappa(levels) -> np.ndarray:
    """A starting concentration per cell from its S2 level: photos spread over about a quarter of the
    cell's edge, and a vMF's angular spread is about 1/sqrt(kappa) radians."""
    edge = _FACE_EDGE_RAD / 2.0 ** np.asarray(levels, dtype=np.float64)
    return np.log(16.0 / edge**2)


@HEADS.register("ce")
def _ce(in_dim: int, hierarchy: Hierarchy, dropout: float) -> nn.Module:
    return CEHead(in_dim, len(hierarchy.fine), dropout)


@HEADS.register("hc")
def _hc(in_dim: int, hierarchy: Hierarchy, dropout: float) -> nn.Module:
    sizes = (len(hierarchy.coarse), len(hierarchy.middle), len(hierarchy.fine))
    return HierarchicalHead(in_dim, sizes, hierarchy.parent_middle, hierarchy.parent_coarse, dropout)


@HEADS.register("mvmf")
def _mvmf(in_dim: int, hierarchy: Hierarchy, dropout: float) -> nn.Module:
    fine = hierarchy.fine
    return MvMFHead(in_dim, fine.centre_unit_vectors(), initial_log_kappa(fine.levels), dropout)


def make_head(kind: str, in_dim: int, hierarchy: Hierarchy, dropout: float = 0.1) -> nn.Module:
    """The head of this kind for this hierarchy, freshly initialised."""
    return HEADS.get(kind)(in_dim, hierarchy, dropout)
