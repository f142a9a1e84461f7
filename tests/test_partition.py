import numpy as np
import pytest
import s2sphere

from geoloc import cells
from geoloc.models.partition import Hierarchy, Partition, adaptive_hierarchy, adaptive_partition, leaf_ids


def clustered_points(n=800, seed=0):
    """Photos bunched around a few cities plus a sparse worldwide background."""
    rng = np.random.default_rng(seed)
    cities = np.array([[48.85, 2.35], [40.71, -74.0], [35.68, 139.69], [-33.87, 151.2], [51.5, -0.12]])
    k = rng.integers(0, len(cities), n)
    lat = cities[k, 0] + rng.normal(0, 0.5, n)
    lon = cities[k, 1] + rng.normal(0, 0.5, n)
    sparse = rng.random(n) < 0.2
    lat[sparse] = np.degrees(np.arcsin(rng.uniform(-1, 1, sparse.sum())))
    lon[sparse] = rng.uniform(-180, 180, sparse.sum())
    return lat, lon


def test_every_kept_point_lies_in_exactly_one_cell():
    lat, lon = clustered_points()
    part = adaptive_partition(lat, lon, n_cells=40, min_per_cell=5)
    leaves = leaf_ids(lat, lon)
    ranges = np.array([part.leaf_range(i) for i in range(len(part))])
    inside = (leaves[:, None] >= ranges[None, :, 0]) & (leaves[:, None] <= ranges[None, :, 1])
    hits = inside.sum(axis=1)
    assigned = part.assign(lat, lon)
    assert set(hits) <= {0, 1}
    assert np.array_equal(assigned >= 0, hits == 1)
    assert np.array_equal(assigned[hits == 1], inside[hits == 1].argmax(axis=1))
    assert np.array_equal(np.bincount(assigned[assigned >= 0], minlength=len(part)), part.counts)
    assert part.counts.min() >= 5
    assert len(part) >= 40
    assert (assigned >= 0).mean() > 0.9


def test_cells_never_overlap():
    lat, lon = clustered_points()
    for kwargs in ({"n_cells": 10}, {"n_cells": 60, "min_per_cell": 3}, {"max_per_cell": 25}):
        part = adaptive_partition(lat, lon, **kwargs)
        ids = [s2sphere.CellId.from_token(t) for t in part.tokens]
        for i, a in enumerate(ids):
            assert not any(a.contains(b) for j, b in enumerate(ids) if j != i)


def test_max_per_cell_and_max_level_stop_the_splitting():
    lat, lon = clustered_points()
    part = adaptive_partition(lat, lon, max_per_cell=25, max_level=9)
    assert part.levels.max() <= 9
    assert np.all((part.counts <= 25) | (part.levels == 9))


def test_leaf_range_matches_geoloc_cells():
    lat, lon = clustered_points()
    part = adaptive_partition(lat, lon, n_cells=20)
    for i, token in enumerate(part.tokens):
        assert part.leaf_range(i) == cells.leaf_range(token)


def test_antimeridian_cluster_centre_is_near_180_not_0():
    rng = np.random.default_rng(1)
    lat = 10 + rng.normal(0, 0.05, 60)
    lon = np.where(rng.random(60) < 0.5, 179.9, -179.9) + rng.normal(0, 0.02, 60)
    lon = (lon + 180) % 360 - 180
    part = adaptive_partition(lat, lon, n_cells=1)
    assert len(part) == 1 and part.counts[0] == 60
    assert abs(part.centres[0, 1]) > 179.8
    assert abs(part.centres[0, 0] - 10) < 0.1
    # Deeper cells split along lon 180; each keeps its centre on its own side of it.
    deep = adaptive_partition(lat, lon, max_per_cell=5, min_level=4)
    assert np.all(np.abs(deep.centres[:, 1]) > 179.5)


def test_pole_cluster():
    rng = np.random.default_rng(2)
    lat = 89.95 + rng.uniform(-0.04, 0.04, 80)
    lon = rng.uniform(-180, 180, 80)
    part = adaptive_partition(lat, lon, max_per_cell=10)
    assert np.all(part.assign(lat, lon) >= 0)
    assert part.counts.sum() == 80
    assert np.all(part.centres[:, 0] > 89.8)
    whole = adaptive_partition(lat, lon, n_cells=1)
    assert whole.centres[0, 0] > 89.9


def test_partition_json_round_trip():
    lat, lon = clustered_points()
    part = adaptive_partition(lat, lon, n_cells=30, min_per_cell=2)
    back = Partition.from_json(part.to_json())
    assert back.tokens == part.tokens
    assert np.array_equal(back.centres, part.centres)
    assert np.array_equal(back.counts, part.counts)
    assert np.array_equal(back.levels, part.levels)
    assert np.array_equal(back.assign(lat, lon), part.assign(lat, lon))


def test_json_rejects_another_version():
    part = adaptive_partition([1.0, 2.0], [3.0, 4.0], n_cells=1)
    data = part.to_dict() | {"version": 99}
    with pytest.raises(ValueError, match="version"):
        Partition.from_dict(data)


def test_hierarchy_nests_and_round_trips():
    lat, lon = clustered_points()
    hier = adaptive_hierarchy(lat, lon, (6, 20, 60), min_per_cell=4)
    assert len(hier.coarse) <= len(hier.middle) <= len(hier.fine)
    for i in range(len(hier.fine)):
        f_lo, f_hi = hier.fine.leaf_range(i)
        m_lo, m_hi = hier.middle.leaf_range(hier.parent_middle[i])
        c_lo, c_hi = hier.coarse.leaf_range(hier.parent_coarse[i])
        assert c_lo <= m_lo <= f_lo <= f_hi <= m_hi <= c_hi
    # A point kept in the fine partition is kept, in its parents' cells, by the coarser ones.
    fine = hier.fine.assign(lat, lon)
    kept = fine >= 0
    assert np.array_equal(hier.middle.assign(lat, lon)[kept], hier.parent_middle[fine[kept]])
    assert np.array_equal(hier.coarse.assign(lat, lon)[kept], hier.parent_coarse[fine[kept]])

    back = Hierarchy.from_json(hier.to_json())
    assert back.fine.tokens == hier.fine.tokens
    assert np.array_equal(back.parent_middle, hier.parent_middle)
    assert np.array_equal(back.parent_coarse, hier.parent_coarse)


def test_hierarchy_refuses_partitions_that_do_not_nest():
    lat, lon = clustered_points()
    coarse = adaptive_partition(lat, lon, n_cells=5, min_level=1)
    other = adaptive_partition(np.clip(lat + 30, -90, 90), lon, n_cells=40)
    with pytest.raises(ValueError, match="nest"):
        Hierarchy(coarse, coarse, other)
