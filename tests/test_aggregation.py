import numpy as np
import pytest

from geoloc.aggregation import Pool, cluster, kernel_density, mean, nearest, witnesses
from geoloc.evaluation import accuracy, photographer_folds
from geoloc.geodesy import haversine_km, spherical_mean


def test_haversine_known_distance():
    # Paris -> London, about 344 km
    assert haversine_km(48.8566, 2.3522, 51.5074, -0.1278) == pytest.approx(343.5, abs=1.0)


def test_spherical_mean_across_the_antimeridian_and_at_a_pole():
    lat, lon = spherical_mean([10, 10], [179.5, -179.5])
    assert lat == pytest.approx(10, abs=0.01) and abs(lon) == pytest.approx(180, abs=1e-6)
    lat, _ = spherical_mean([89.9, 89.9, 89.9], [0, 120, -120])
    assert lat == pytest.approx(90, abs=0.01)


def test_cluster_picks_the_largest_group_and_its_mean():
    lat = np.array([10.0, 48.8570, 48.8575, 48.8580, 10.0001])
    lon = np.array([10.0, 2.3500, 2.3505, 2.3510, 10.0001])
    scores = np.array([0.99, 0.5, 0.5, 0.5, 0.98])
    estimate = cluster(lat, lon, scores)
    assert sorted(estimate.support) == [1, 2, 3]
    assert haversine_km(estimate.lat, estimate.lon, 48.8575, 2.3505) < 0.05


def test_cluster_tie_goes_to_the_cluster_holding_the_most_similar_photo():
    lat = np.array([40.0, 40.0001, -20.0, -20.0001])
    lon = np.array([-3.0, -3.0001, 30.0, 30.0001])
    estimate = cluster(lat, lon, np.array([0.4, 0.3, 0.9, 0.2]))
    assert sorted(estimate.support) == [2, 3]


def test_cluster_eps_is_one_kilometre():
    # two photos 0.9 km apart join, two 1.1 km apart don't
    lat = np.array([0.0, 0.9 / 111.195, 30.0, 30.0 + 1.1 / 111.195])
    lon = np.array([50.0, 50.0, 50.0, 50.0])
    estimate = cluster(lat, lon, np.array([0.1, 0.1, 0.9, 0.8]))
    assert sorted(estimate.support) == [0, 1]


def test_witnesses_pick_the_place_most_photographers_vouch_for():
    """Paris is the most similar neighbour and four photos near it are one person's; Rome is less similar,
    but three people took the pool's photos there."""
    lat, lon = np.array([48.857, 41.890, 48.858]), np.array([2.350, 12.492, 2.351])
    scores = np.array([0.9, 0.8, 0.7])
    pool = Pool(np.array([48.857, 48.858, 48.86, 48.85, 41.890, 41.891, 41.892]),
                np.array([2.350, 2.351, 2.36, 2.34, 12.492, 12.493, 12.494]),
                np.array(["ann", "ann", "ann", "ann", "bo", "cy", "di"]))
    estimate = witnesses(lat, lon, scores, pool=pool)
    assert (estimate.lat, estimate.lon, estimate.support) == (41.890, 12.492, [1])
    assert pool.witnesses([48.857, 41.890, 0.0], [2.350, 12.492, 0.0]).tolist() == [1, 3, 0]
    tied = Pool(pool.lat, pool.lon, np.array(["ann", "ann", "ann", "eve", "bo", "cy", "di"]))
    assert pool.witnesses(48.857, 2.350).tolist() == [1] and tied.witnesses(48.857, 2.350).tolist() == [2]
    even = Pool(pool.lat, pool.lon, np.array(["ann", "eve", "fay", "ann", "bo", "cy", "di"]))
    assert witnesses(lat, lon, scores, pool=even).support == [0, 2]  # three each: the more similar place
    alone = witnesses(lat, lon, scores)  # no pool: the K neighbours vouch, one photographer each
    assert (alone.lat, alone.support) == (48.857, [0, 2])


def test_nearest_mean_and_kernel_density():
    lat = np.array([10.0, 50.0, 50.1, 50.2])
    lon = np.array([10.0, 8.0, 8.1, 8.2])
    scores = np.array([0.9, 0.85, 0.84, 0.83])
    assert (nearest(lat, lon, scores).lat, nearest(lat, lon, scores).lon) == (10.0, 10.0)
    kde = kernel_density(lat, lon, scores, sigma_km=50, power=10)
    assert kde.lat == pytest.approx(50.1)  # the dense group wins over the single best photo
    assert len(mean(lat, lon, scores).support) == 4


def test_accuracy_table():
    table = accuracy([0.05, 3, 30, 3000])
    assert table["0.1km"] == 25.0 and table["5km"] == 50.0 and table["2500km"] == 75.0
    assert table["median_km"] == pytest.approx(16.5)


def test_photographer_folds_never_split_a_photographer():
    owners = np.array(["a"] * 5 + ["b"] * 3 + ["c"] * 3 + ["d"] * 2 + ["e"])
    folds = photographer_folds(owners, k=3)
    for owner in np.unique(owners):
        assert len(set(folds[owners == owner])) == 1
    assert set(folds) == {0, 1, 2}


def test_dbscan_labels_partition_points_as_scikit_learn_does():
    """The min_samples=1 path (connected components within eps) against scikit-learn's DBSCAN itself."""
    from sklearn.cluster import DBSCAN

    from geoloc.aggregation import EARTH_RADIUS_KM, _dbscan_labels

    rng = np.random.default_rng(0)
    eps = 1.0 / EARTH_RADIUS_KM
    for _ in range(300):
        n = int(rng.integers(1, 21))
        centre = rng.uniform([-60, -180], [60, 180])
        points = centre + rng.normal(scale=rng.choice([0.002, 0.01, 1.0]), size=(n, 2))
        lat, lon = np.radians(np.clip(points[:, 0], -89, 89)), np.radians((points[:, 1] + 180) % 360 - 180)
        ours = _dbscan_labels(lat, lon, eps, 1)
        theirs = DBSCAN(eps=eps, min_samples=1, metric="haversine").fit_predict(np.stack([lat, lon], axis=1))
        assert np.array_equal(ours[:, None] == ours[None, :], theirs[:, None] == theirs[None, :])
