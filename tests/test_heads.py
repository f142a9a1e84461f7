import math

import numpy as np
import pytest
import torch

from geoloc.models.heads import CEHead, HierarchicalHead, MvMFHead, Targets, initial_log_kappa, log_vmf, make_head
from geoloc.models.partition import adaptive_hierarchy

torch.set_num_threads(1)


def set_logits(layer, logits):
    """With a single input feature equal to 1, the layer's logits are its bias."""
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.copy_(torch.tensor(logits, dtype=torch.float32))


ONE = torch.ones(1, 1)


def test_ce_loss_by_hand():
    head = CEHead(2, 3).eval()
    with torch.no_grad():
        head.fc.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
        head.fc.bias.zero_()
    x = torch.tensor([[1.0, 0.0]])  # logits (1, 0, 0)
    loss = head.loss(x, Targets(torch.tensor([0]), torch.zeros(1, 3)))
    # -log(e / (e + 2)) = log(e + 2) - 1
    assert loss.item() == pytest.approx(0.5514447139, abs=1e-6)
    assert torch.exp(head.cell_log_probs(x)).sum().item() == pytest.approx(1.0, abs=1e-6)


def test_hierarchical_loss_and_combination_by_hand():
    head = HierarchicalHead(1, (2, 2, 3), parent_middle=[0, 0, 1], parent_coarse=[0, 0, 1]).eval()
    set_logits(head.coarse, [0.0, 0.0])  # p = 1/2, 1/2
    set_logits(head.middle, [math.log(3), 0.0])  # p = 3/4, 1/4
    set_logits(head.fine, [0.0, 0.0, 0.0])  # p = 1/3 each
    loss = head.loss(ONE, Targets(torch.tensor([0]), torch.zeros(1, 3)))
    # (log 3 + log 4/3 + log 2) / 3 = log 8 / 3 = log 2
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    # products 1/3*3/4*1/2 = 1/8, 1/8, 1/3*1/4*1/2 = 1/24; renormalised: 3/7, 3/7, 1/7
    probs = head.cell_log_probs(ONE).exp()[0]
    assert probs.tolist() == pytest.approx([3 / 7, 3 / 7, 1 / 7], abs=1e-6)


def test_vmf_normaliser_matches_the_paper():
    """log vMF in log space equals log(k / (4 pi sinh k)) + k mu.x where sinh is finite."""
    mu = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    theta = torch.tensor([0.0, 0.3, 1.0, 2.5], dtype=torch.float64)
    x = torch.stack([torch.sin(theta), torch.zeros_like(theta), torch.cos(theta)], dim=1)
    for k in (1e-4, 0.5, 1.0, 10.0, 50.0, 300.0):
        got = log_vmf(x, mu, torch.tensor([k], dtype=torch.float64))[:, 0]
        want = [math.log(k / (4 * math.pi * math.sinh(k))) + k * math.cos(t) for t in theta.tolist()]
        assert got.tolist() == pytest.approx(want, rel=1e-9, abs=1e-9)


def test_vmf_integrates_to_one_and_stays_finite_when_sharp():
    theta = torch.linspace(0, math.pi, 200001, dtype=torch.float64)
    x = torch.stack([torch.sin(theta), torch.zeros_like(theta), torch.cos(theta)], dim=1)
    mu = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    density = log_vmf(x, mu, torch.tensor([20.0], dtype=torch.float64))[:, 0].exp()
    total = torch.trapezoid(2 * math.pi * torch.sin(theta) * density, theta)
    assert total.item() == pytest.approx(1.0, abs=1e-6)
    sharp = log_vmf(x[:3].float(), mu.float(), torch.tensor([1e7]))
    assert torch.isfinite(sharp[0]).all()


def test_mvmf_loss_by_hand():
    centres = [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    head = MvMFHead(1, centres, log_kappa=[math.log(2.0), 0.0]).eval()
    set_logits(head.fc, [math.log(3), 0.0])  # weights 3/4, 1/4
    x = torch.tensor([[0.0, 0.0, 1.0]])  # the true location is the first centre
    loss = head.loss(ONE, Targets(torch.tensor([0]), x))

    def vmf(k, cos):
        return k / (4 * math.pi * math.sinh(k)) * math.exp(k * cos)

    want = -math.log(0.75 * vmf(2.0, 1.0) + 0.25 * vmf(1.0, 0.0))
    assert want == pytest.approx(1.3466314011, abs=1e-9)
    assert loss.item() == pytest.approx(want, abs=1e-5)
    assert head.cell_log_probs(ONE).exp()[0].tolist() == pytest.approx([0.75, 0.25], abs=1e-6)


def test_initial_concentration_shrinks_with_cell_size():
    log_kappa = initial_log_kappa([0, 5, 10])
    assert np.all(np.diff(log_kappa) > 0)
    # a level-10 cell is ~10 km wide: photos within a few km, kappa of order 1e6-1e7
    assert 1e6 < math.exp(log_kappa[2]) < 1e8


@pytest.mark.parametrize("kind", ["ce", "hc", "mvmf"])
def test_every_head_gives_fine_cell_distributions_and_trains(kind):
    rng = np.random.default_rng(0)
    lat, lon = rng.uniform(-60, 60, 300), rng.uniform(-180, 180, 300)
    hier = adaptive_hierarchy(lat, lon, (3, 6, 12), min_per_cell=2)
    torch.manual_seed(0)
    head = make_head(kind, 8, hier)
    cell = torch.as_tensor(hier.fine.assign(lat, lon))
    keep = cell >= 0
    feats = torch.randn(int(keep.sum()), 8)
    xyz = torch.as_tensor(hier.fine.centre_unit_vectors()[cell[keep]], dtype=torch.float32)
    targets = Targets(cell[keep], xyz)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    before = head.loss(feats, targets).item()
    for _ in range(20):
        opt.zero_grad()
        head.loss(feats, targets).backward()
        opt.step()
    assert head.loss(feats, targets).item() < before
    lp = head.eval().cell_log_probs(feats)
    assert lp.shape == (len(feats), len(hier.fine))
    assert torch.allclose(lp.exp().sum(dim=1), torch.ones(len(feats)), atol=1e-5)


def test_unknown_kind_is_refused():
    hier = adaptive_hierarchy([0.0, 1.0], [0.0, 1.0], (1, 1, 1))
    with pytest.raises(ValueError, match="unknown head"):
        make_head("knn", 4, hier)
