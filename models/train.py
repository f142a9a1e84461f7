"""Training of the heads and the RRM on arrays of cached backbone features (paper 4.2, scaled to small data).

Both trainers split validation photos BY PHOTOGRAPHER (a photographer's near-duplicate shots on both
sides would flatter every figure), use AdamW with a cosine decay over the planned steps, stop early on
the validation loss and return the best epoch's module, on the CPU, in eval mode, with its metrics.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from geoloc.geodesy import to_unit_vectors
from geoloc.models.device import resolve_device
from geoloc.models.heads import Targets, make_head
from geoloc.models.partition import Hierarchy, Partition
from geoloc.models.rrm import RRM, CellPairSampler, MemoryBank, info_nce

CENTRE_PHOTOS = 16384


def train_heads(
    features,
    lat,
    lon,
    photographer,
    hierarchy: Hierarchy,
    kind: str = "ce",
    *,
    epochs: int = 60,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    dropout: float = 0.1,
    val_fraction: float = 0.1,
    patience: int = 8,
    seed: int = 0,
    device: str = "auto",
) -> tuple[nn.Module, dict]:
    """Train one classification head ("ce", "hc" or "mvmf") over the fine cells of `hierarchy`.

    Photos outside every fine cell are left out. Metrics: epochs run, best epoch, train and validation
    loss at the best epoch, validation top-1 fine-cell accuracy, split sizes. Defaults suit a few
    thousand photos (seconds on a CPU); the paper's lr 1e-5 for 5 epochs suits its 4.5M photos."""
    data = _Data(features, lat, lon, photographer, hierarchy.fine, val_fraction, seed)
    dev = resolve_device(device)
    torch.manual_seed(seed)
    head = make_head(kind, data.x.shape[1], hierarchy, dropout).to(dev)
    steps = epochs * math.ceil(len(data.train) / batch_size)
    opt, sched = _optimiser(head, lr, weight_decay, steps)
    order = torch.Generator().manual_seed(seed)

    def loss_of(rows) -> torch.Tensor:
        return head.loss(data.x[rows].to(dev), data.targets(rows, dev))

    def epoch_fn() -> float:
        batches = torch.randperm(len(data.train), generator=order).split(batch_size)
        return _train_epoch(head, opt, sched, batches, lambda batch: loss_of(data.train[batch]))

    def val_fn() -> float:
        return _eval_in_batches(loss_of, data.val)

    stopper = _fit(head, epoch_fn, val_fn if len(data.val) else None, epochs, patience)
    head.eval()
    metrics = {"kind": kind, **stopper.metrics(), **data.sizes(), "val_top1": None}
    if len(data.val):
        with torch.no_grad():
            hits = [
                (head.cell_log_probs(data.x[rows].to(dev)).argmax(1).cpu() == data.cells[rows]).sum().item()
                for rows in data.val.split(4096)
            ]
        metrics["val_top1"] = sum(hits) / len(data.val)
    return head.cpu(), metrics


def train_rrm(
    features,
    lat,
    lon,
    photographer,
    partition: Partition,
    *,
    hidden: int = 1024,
    epochs: int = 200,
    batch_size: int = 64,
    lr: float = 3e-4,
    weight_decay: float = 1e-4,
    tau: float = 0.05,
    bank_size: int = 4096,
    val_fraction: float = 0.1,
    patience: int = 30,
    seed: int = 0,
    device: str = "auto",
) -> tuple[RRM, dict]:
    """Train the RRM with InfoNCE over one pair per cell per epoch (cells of `partition`, the fine one).

    Validation loss: InfoNCE of each validation photo against one fixed training photo per cell (its
    own cell's is the positive), so it exists even when a cell has a single validation photo. Metric
    `val_top1`: how often a validation photo's nearest training photo lies in its cell, beside
    `val_top1_raw`, the same with the raw backbone features, so the gain of the module shows. The
    residual trains centred over each batch and is re-centred over the training photos after each
    epoch (see RRM: without it the embedding space collapses).

    Defaults suit a few thousand photos: an epoch is then only a few steps, so lr 3e-4 (the paper's
    1e-5 assumes ~500 steps per epoch) and Dh 1024 (the paper's 4096 means 10M parameters for a few
    thousand photos, and 4x the CPU time). Tau, batch size, bank size and weight decay are the paper's."""
    data = _Data(features, lat, lon, photographer, partition, val_fraction, seed)
    dev = resolve_device(device)
    torch.manual_seed(seed)
    rrm = RRM(data.x.shape[1], hidden).to(dev)
    sampler = CellPairSampler(data.cells[data.train].numpy(), seed)
    if len(sampler) == 0:
        raise ValueError("no cell has two training photos: nothing to contrast")
    steps = epochs * math.ceil(len(sampler) / batch_size)
    opt, sched = _optimiser(rrm, lr, weight_decay, steps)
    bank, centre_on = MemoryBank(bank_size), _centring_sample(data, seed)
    epoch_fn = _contrastive_epoch(rrm, data, sampler, bank, (opt, sched), batch_size, tau, dev, centre_on)
    val_fn = _prototype_loss(rrm, data, seed, tau, dev)
    stopper = _fit(rrm, epoch_fn, val_fn, epochs, patience)
    rrm.eval()
    metrics = {**stopper.metrics(), **data.sizes(), "val_top1": None, "val_top1_raw": None}
    if len(data.val):
        with torch.no_grad():
            metrics["val_top1"] = _nn_cell_accuracy(data, lambda x: rrm(x.to(dev)).cpu())
            metrics["val_top1_raw"] = _nn_cell_accuracy(data, lambda x: nn.functional.normalize(x, dim=-1))
    return rrm.cpu(), metrics


def _contrastive_epoch(rrm: RRM, data, sampler, bank: MemoryBank, optimiser, batch_size, tau, dev, centre_on):
    """One epoch of InfoNCE steps over the sampler's pairs (one per cell), against the memory bank, the
    residual centred over each batch; then the residual's mean over `centre_on` folded into its bias."""
    opt, sched = optimiser

    def batch_loss(pair) -> torch.Tensor:
        qb, pb = pair
        rows = data.train[torch.cat([qb, pb])]
        emb = rrm(data.x[rows].to(dev), centred=True)
        cells = data.cells[rows].to(dev)
        loss = info_nce(emb[: len(qb)], emb[len(qb) :], cells[: len(qb)], bank, tau)
        bank.enqueue(emb, cells)  # detached copies: the loss keeps the bank it was computed against
        return loss

    def epoch_fn() -> float:
        q, p, _ = (torch.from_numpy(a) for a in sampler.epoch())
        loss = _train_epoch(rrm, opt, sched, zip(q.split(batch_size), p.split(batch_size)), batch_loss)
        rrm.centre_residual(centre_on)
        return loss

    return epoch_fn


def _centring_sample(data: "_Data", seed: int) -> torch.Tensor:
    """Features of the training photos the residual is centred over: all of them, or a fixed random
    sample of CENTRE_PHOTOS when there are more (the mean of that many is as good, at a bounded cost)."""
    rows = data.train
    if len(rows) > CENTRE_PHOTOS:
        rows = rows[torch.from_numpy(np.random.default_rng(seed).choice(len(rows), CENTRE_PHOTOS, replace=False))]
    return data.x[rows]


def _prototype_loss(rrm: RRM, data: "_Data", seed: int, tau: float, dev):
    """The validation loss of train_rrm, or None when no validation photo's cell has a training photo."""
    reps, val_rows, val_targets = _prototype_split(data, seed)
    if not len(val_rows):
        return None

    @torch.no_grad()
    def val_fn() -> float:
        protos = rrm(data.x[reps].to(dev))

        def loss(idx):
            logits = rrm(data.x[val_rows[idx]].to(dev)) @ protos.T / tau
            return nn.functional.cross_entropy(logits, val_targets[idx].to(dev))

        return _eval_in_batches(loss, torch.arange(len(val_rows)))

    return val_fn


class _Data:
    """Features, cells and the photographer split, as CPU tensors (batches go to the device)."""

    def __init__(self, features, lat, lon, photographer, partition, val_fraction, seed):
        features = np.ascontiguousarray(features, dtype=np.float32)
        lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
        photographer = np.asarray(photographer).astype(str)
        if not len(features) == len(lat) == len(lon) == len(photographer):
            raise ValueError("features, lat, lon and photographer must have one row per photo")
        cells = partition.assign(lat, lon)
        kept = np.flatnonzero(cells >= 0)
        self.n_unassigned = len(cells) - len(kept)
        self.x = torch.from_numpy(features[kept])
        self.cells = torch.from_numpy(cells[kept])
        self.xyz = torch.from_numpy(to_unit_vectors(lat[kept], lon[kept]).astype(np.float32))
        is_val = _validation_mask(photographer[kept], val_fraction, seed)
        self.train = torch.from_numpy(np.flatnonzero(~is_val))
        self.val = torch.from_numpy(np.flatnonzero(is_val))
        self.n_val_photographers = len(np.unique(photographer[kept][is_val]))

    def targets(self, rows, device) -> Targets:
        return Targets(self.cells[rows].to(device), self.xyz[rows].to(device))

    def sizes(self) -> dict:
        return {
            "n_train": len(self.train),
            "n_val": len(self.val),
            "n_val_photographers": self.n_val_photographers,
            "n_unassigned": self.n_unassigned,
        }


def _validation_mask(photographer: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Whole photographers, drawn in random order, to validation while they fit in `val_fraction` of
    the photos. Drawing (rather than balanced folds, which put the biggest photographer alone in a
    fold) keeps the validation set spread over many photographers and places."""
    if val_fraction <= 0:
        return np.zeros(len(photographer), dtype=bool)
    if not val_fraction < 1:
        raise ValueError("val_fraction must lie in [0, 1)")
    owners, owner_of, counts = np.unique(photographer, return_inverse=True, return_counts=True)
    if len(owners) < 2:
        raise ValueError("a validation split needs two photographers or more; pass val_fraction=0 to skip it")
    budget = val_fraction * len(photographer)
    chosen, taken = np.zeros(len(owners), dtype=bool), 0
    for i in np.random.default_rng(seed).permutation(len(owners)):
        if taken + counts[i] <= budget:
            chosen[i], taken = True, taken + counts[i]
    if not chosen.any():
        chosen[np.argmin(counts)] = True
    return chosen[owner_of]


def _optimiser(module: nn.Module, lr, weight_decay, steps):
    """AdamW with cosine decay per step. Weight decay only on weight matrices: decaying biases, norms
    or MvMF log-concentrations toward 0 would be a pull toward arbitrary values."""
    decay = [p for p in module.parameters() if p.ndim >= 2]
    rest = [p for p in module.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}], lr=lr
    )
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))


class _Stopper:
    """Keeps the weights of the best validation epoch; says when `patience` epochs brought nothing."""

    def __init__(self, module: nn.Module, patience: int):
        self.module, self.patience = module, patience
        self.best_val, self.best_epoch, self.best_state, self.best_train = math.inf, 0, None, None
        self.epochs = 0

    def update(self, train_loss: float, val_loss: float | None) -> bool:
        self.epochs += 1
        if val_loss is None or val_loss < self.best_val:
            self.best_val = math.inf if val_loss is None else val_loss
            self.best_epoch, self.best_train = self.epochs, train_loss
            self.best_state = copy.deepcopy(self.module.state_dict())
        return val_loss is not None and self.epochs - self.best_epoch >= self.patience

    def metrics(self) -> dict:
        return {
            "epochs": self.epochs,
            "best_epoch": self.best_epoch,
            "train_loss": self.best_train,
            "val_loss": None if math.isinf(self.best_val) else self.best_val,
        }


def _train_epoch(module: nn.Module, opt, sched, batches, batch_loss) -> float:
    """One AdamW step (and scheduler step) per batch, in training mode; the mean of the batch losses."""
    module.train()
    losses = []
    for batch in batches:
        loss = batch_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return float(np.mean(losses))


def _fit(module, epoch_fn, val_fn, epochs, patience) -> _Stopper:
    stopper = _Stopper(module, patience)
    for _ in range(epochs):
        train_loss = epoch_fn()
        module.eval()
        if stopper.update(train_loss, val_fn() if val_fn else None):
            break
    module.load_state_dict(stopper.best_state)
    return stopper


def _eval_in_batches(loss_of_rows, rows: torch.Tensor, batch: int = 4096) -> float:
    """Mean of a per-row-mean loss over all rows, without gradients."""
    with torch.no_grad():
        total = sum(loss_of_rows(r).item() * len(r) for r in rows.split(batch))
    return total / len(rows)


def _prototype_split(data: _Data, seed: int):
    """One fixed training photo per cell, and the validation photos whose cell has one."""
    train_cells = data.cells[data.train].numpy()
    shuffled = np.random.default_rng(seed).permutation(len(train_cells))
    cells, first = np.unique(train_cells[shuffled], return_index=True)  # a random photo of each cell
    val_cells = data.cells[data.val].numpy()
    has_rep = np.isin(val_cells, cells)
    targets = np.searchsorted(cells, val_cells[has_rep])
    reps = torch.from_numpy(shuffled[first])
    return data.train[reps], data.val[torch.from_numpy(has_rep)], torch.from_numpy(targets)


def _nn_cell_accuracy(data: _Data, embed, batch: int = 4096) -> float:
    """Share of validation photos whose most similar training photo lies in their cell."""
    gallery = torch.cat([embed(data.x[r]) for r in data.train.split(batch)])
    gallery_cells = data.cells[data.train]
    hits = 0
    for rows in data.val.split(batch):
        nearest = (embed(data.x[rows]) @ gallery.T).argmax(dim=1)
        hits += (gallery_cells[nearest] == data.cells[rows]).sum().item()
    return hits / len(data.val)
