import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from geoloc.models.rrm import RRM, CellPairSampler, MemoryBank, info_nce

torch.set_num_threads(1)

# Two pairs on orthogonal unit vectors: query i and its positive coincide (similarity 1), the other
# pair's positive is orthogonal (similarity 0).
Q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
CELLS = torch.tensor([0, 1])


def bank_of(vectors, cells):
    bank = MemoryBank(size=16)
    bank.enqueue(torch.tensor(vectors), torch.tensor(cells))
    return bank


def test_info_nce_by_hand():
    # each query: -log(e^(1/tau) / (e^(1/tau) + e^0)) = log(1 + e^-2) with tau = 0.5
    assert info_nce(Q, Q.clone(), CELLS, tau=0.5).item() == pytest.approx(0.1269280110, abs=1e-6)


def test_info_nce_with_bank_by_hand():
    # the bank holds [1, 0] labelled cell 1: a negative of similarity 1 for query 0 (cell 0), masked
    # for query 1 (same cell). Query 0: log(2 + e^-2); query 1: log(1 + e^-2).
    bank = bank_of([[1.0, 0.0]], [1])
    loss = info_nce(Q, Q.clone(), CELLS, bank, tau=0.5)
    assert loss.item() == pytest.approx((math.log(2 + math.exp(-2)) + math.log(1 + math.exp(-2))) / 2, abs=1e-6)
    assert loss.item() == pytest.approx(0.4427758434, abs=1e-6)


def test_same_cell_bank_entries_are_never_negatives():
    q, cell = Q[:1], CELLS[:1]
    # three copies of the query in the bank, labelled with its own cell: all masked, only the
    # positive is left, so the loss is -log 1 = 0
    same = bank_of([[1.0, 0.0]] * 3, [0] * 3)
    assert info_nce(q, q.clone(), cell, same, tau=0.5).item() == pytest.approx(0.0, abs=1e-7)
    # the same vectors labelled with another cell are negatives as similar as the positive: log 4
    foreign = bank_of([[1.0, 0.0]] * 3, [7] * 3)
    assert info_nce(q, q.clone(), cell, foreign, tau=0.5).item() == pytest.approx(math.log(4), abs=1e-6)


def test_same_cell_batch_entries_are_never_negatives():
    # a third pair from cell 0, identical to pair 0, is masked for pairs 0 and 2 (log(1 + e^-2) each)
    # and is a second negative for pair 1 (log(1 + 2 e^-2))
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    loss = info_nce(q, q.clone(), torch.tensor([0, 1, 0]), tau=0.5)
    e = math.exp(-2)
    assert loss.item() == pytest.approx((2 * math.log(1 + e) + math.log(1 + 2 * e)) / 3, abs=1e-6)


def test_bank_is_fifo_with_a_size_cap():
    bank = MemoryBank(size=5)
    for start in (0, 2, 4):
        emb = torch.arange(start, start + 2, dtype=torch.float32)[:, None].repeat(1, 3).requires_grad_()
        bank.enqueue(emb * 1, torch.arange(start, start + 2))
    assert len(bank) == 5
    assert bank.cells.tolist() == [1, 2, 3, 4, 5]
    assert bank.embeddings[:, 0].tolist() == [1, 2, 3, 4, 5]
    assert not bank.embeddings.requires_grad


def test_rrm_outputs_unit_vectors_and_starts_as_the_normalised_input():
    torch.manual_seed(0)
    rrm = RRM(dim=16, hidden=32)
    z = torch.randn(5, 16) * 3 + 1
    out = rrm(z)
    assert out.shape == (5, 16)
    assert torch.allclose(out.norm(dim=1), torch.ones(5), atol=1e-6)
    assert torch.allclose(out, F.normalize(rrm.norm_out(rrm.norm_in(z)), dim=-1), atol=1e-6)
    assert (rrm.dim, rrm.hidden) == (16, 32)


def test_sampler_draws_one_pair_of_distinct_photos_per_cell():
    cells = np.array([0, 0, 0, 1, 1, 2, -1, 3, 3, 3, 3])  # cell 2 has one photo, -1 is unassigned
    sampler = CellPairSampler(cells, seed=0)
    assert len(sampler) == 3
    seen = set()
    for _ in range(30):
        q, p, c = sampler.epoch()
        assert sorted(c.tolist()) == [0, 1, 3]
        assert np.all(q != p)
        assert np.array_equal(cells[q], c) and np.array_equal(cells[p], c)
        seen.add(tuple(q))
    assert len(seen) > 1  # epochs draw new pairs
    again = CellPairSampler(cells, seed=0)
    first = CellPairSampler(cells, seed=0).epoch()
    assert all(np.array_equal(a, b) for a, b in zip(again.epoch(), first))


def test_bank_of_size_zero_stays_empty():
    bank = MemoryBank(size=0)
    bank.enqueue(torch.ones(3, 2), torch.arange(3))
    assert len(bank) == 0
    assert info_nce(Q, Q.clone(), CELLS, bank, tau=0.5).item() == pytest.approx(0.1269280110, abs=1e-6)


def test_centred_residual_ignores_a_shared_vector_and_folds_into_the_bias():
    torch.manual_seed(0)
    rrm = RRM(dim=16, hidden=32)
    with torch.no_grad():
        for p in rrm.parameters():
            p.normal_(0, 0.5)
    z = torch.randn(40, 16).relu()
    centred = rrm(z, centred=True)
    with torch.no_grad():
        rrm.ffn[2].bias += 100.0  # the same vector added to every photo: nothing to tell them apart by
    assert torch.allclose(rrm(z, centred=True), centred, atol=1e-5)
    assert not torch.allclose(rrm(z), centred, atol=1e-2)
    rrm.centre_residual(z)  # folded into the last bias: the plain forward is the centred one
    assert torch.allclose(rrm(z), centred, atol=1e-5)
    assert rrm.ffn(rrm.norm_in(z)).mean(dim=0).abs().max().item() < 1e-4


def neighbour_gap(embeddings: np.ndarray) -> float:
    """Median over photos of the similarity gap between their 1st and 10th nearest other photo."""
    sims = embeddings @ embeddings.T
    np.fill_diagonal(sims, -np.inf)
    top = -np.sort(-sims, axis=1)[:, :10]
    return float(np.median(top[:, 0] - top[:, 9]))


def test_trained_rrm_keeps_the_spread_of_the_backbone_space():
    """Cells barely predictable from the features (as with frozen ImageNet features and a few thousand
    photos): InfoNCE's fixed temperature then rewards squeezing every similarity together, which the
    uncentred module did (nearest neighbours all at ~0.95 here, ~0.998 on real photos)."""
    from geoloc.models.partition import adaptive_hierarchy
    from geoloc.models.train import train_rrm

    rng = np.random.default_rng(0)
    n, places = 600, 40
    centres = np.column_stack([rng.uniform(-50, 60, places), rng.uniform(-170, 170, places)])
    k = rng.integers(0, places, n)
    lat, lon = centres[k, 0] + rng.normal(0, 1, n), centres[k, 1] + rng.normal(0, 1, n)
    place_signal = 0.3 * rng.normal(0, 1, (places, 64))
    features = np.maximum(rng.normal(0, 1, (n, 64)) + place_signal[k], 0).astype(np.float32)  # ReLU-like
    photographer = np.array([f"p{i % 60}" for i in range(n)])
    fine = adaptive_hierarchy(lat, lon, (4, 12, 32), min_per_cell=3).fine
    rrm, _ = train_rrm(features, lat, lon, photographer, fine, device="cpu")
    with torch.no_grad():
        embedded = rrm(torch.from_numpy(features)).numpy()
    backbone = features / np.linalg.norm(features, axis=1, keepdims=True)
    assert neighbour_gap(embedded) >= neighbour_gap(backbone)
