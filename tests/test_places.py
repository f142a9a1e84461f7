"""Nearest populated places, on the real GeoNames data the dependency ships (no network)."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from geoloc import places
from geoloc.geodesy import haversine_km
from geoloc.places import Place, nearest_places


def test_known_cities():
    paris, chamonix, sydney = nearest_places([48.8566, 45.9237, -33.8688], [2.3522, 6.8694, 151.2093])
    assert (paris.name, paris.region, paris.country_code, paris.country) == ("Paris", "Île-de-France", "FR", "France")
    assert paris.km < 2
    assert chamonix.name == "Chamonix-Mont-Blanc" and chamonix.country_code == "FR"
    assert chamonix.region == "Auvergne-Rhône-Alpes"
    assert chamonix.label == "Chamonix-Mont-Blanc, Auvergne-Rhône-Alpes, FR"
    assert (sydney.name, sydney.region, sydney.country) == ("Sydney", "New South Wales", "Australia")


def test_either_side_of_the_antimeridian_in_fiji():
    # Levuka (179.32 E) is ~70 km from both points; Tubou (178.81 W) is ~125 km away. A search on raw
    # longitudes would send the eastern point to Tubou, 359 degrees "away" from Levuka.
    west, east = nearest_places([-18.15, -18.15], [179.99, -179.99])
    for place in (west, east):
        assert (place.name, place.country_code, place.country) == ("Levuka", "FJ", "Fiji")
        assert 60 < place.km < 80


def test_mid_pacific_still_gets_a_place_with_its_distance():
    (place,) = nearest_places(0.0, -140.0)
    assert place.name and place.country
    assert place.km > 500
    assert place.km == pytest.approx(float(haversine_km(0.0, -140.0, place.lat, place.lon)), abs=1e-6)


def test_nearest_is_the_great_circle_nearest_near_poles_and_antimeridian():
    lats = np.array([89.9, -89.9, 75.0, -60.0, 10.0, -16.8, 66.0])
    lons = np.array([0.0, 120.0, -179.9, 179.9, 180.0, -180.0, 179.5])
    gazetteer = places._loaded()
    for place, lat, lon in zip(nearest_places(lats, lons), lats, lons):
        best = float(haversine_km(lat, lon, gazetteer.lat, gazetteer.lon).min())
        assert place.km == pytest.approx(best, abs=1e-6)


def test_ten_thousand_points_in_one_call():
    rng = np.random.default_rng(0)
    lats = np.degrees(np.arcsin(rng.uniform(-1, 1, 10_000)))
    lons = rng.uniform(-180, 180, 10_000)
    found = nearest_places(lats, lons)
    assert len(found) == 10_000
    assert all(p.name and p.country_code and p.km >= 0 for p in found)
    assert float(found[1234].km) == pytest.approx(float(haversine_km(lats[1234], lons[1234], found[1234].lat,
                                                                       found[1234].lon)), abs=1e-6)


def test_shapes_broadcast_and_flatten():
    assert nearest_places([], []) == []
    grid = nearest_places(np.array([[48.8566], [-33.8688]]), np.array([[2.3522, 151.2093]]))
    assert [p.name for p in grid][::3] == ["Paris", "Sydney"]
    assert len(grid) == 4


@pytest.mark.parametrize("lat, lon", [(91.0, 0.0), (-90.5, 0.0), (float("nan"), 0.0), (0.0, float("inf"))])
def test_bad_coordinates_are_refused(lat, lon):
    with pytest.raises(ValueError):
        nearest_places(lat, lon)


def test_label_skips_empty_parts_and_dict_is_json():
    place = Place(name="Somewhere", region="", country_code="FJ", country="Fiji", lat=-17.0, lon=179.0, km=12.5)
    assert place.label == "Somewhere, FJ"
    assert json.loads(json.dumps(place.to_dict())) == {
        "name": "Somewhere", "region": "", "country_code": "FJ", "country": "Fiji",
        "lat": -17.0, "lon": 179.0, "km": 12.5, "label": "Somewhere, FJ"}
    (real,) = nearest_places(48.8566, 2.3522)
    assert json.loads(json.dumps(real.to_dict()))["label"] == "Paris, Île-de-France, FR"


def test_concurrent_first_lookups_load_the_data_once(monkeypatch):
    monkeypatch.setattr(places, "_gazetteer", None)
    start = threading.Barrier(4)
    seen: list[object] = []

    def lookup() -> None:
        start.wait()
        seen.append(places._loaded())  # the object each thread got, kept alive so a second load would show

    threads = [threading.Thread(target=lookup) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 4 and all(g is seen[0] for g in seen)
    assert nearest_places(45.9237, 6.8694)[0].name == "Chamonix-Mont-Blanc"


def test_parsed_places_are_cached_and_a_damaged_or_unwritable_cache_costs_only_time(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOLOC_CACHE_DIR", str(tmp_path / "cache"))
    folder = places._data_folder()
    fresh = places._Gazetteer(folder)
    cache = places._cache_file(folder)
    assert cache.parent == tmp_path / "cache" and cache.is_file() and not list(cache.parent.glob("*.tmp"))

    def no_parsing(_folder):
        raise AssertionError("parsed again although the cache is good")

    with monkeypatch.context() as patched:
        patched.setattr(places, "_parsed", no_parsing)
        cached = places._Gazetteer(folder)
    assert (cached.names, cached.regions, cached.codes) == (fresh.names, fresh.regions, fresh.codes)
    assert np.array_equal(cached.lat, fresh.lat) and np.array_equal(cached.lon, fresh.lon)
    assert cached.nearest(np.array([45.9237]), np.array([6.8694]))[0].name == "Chamonix-Mont-Blanc"

    cache.write_bytes(cache.read_bytes()[:1000])  # cut short: parsed again, and cached again
    assert places._Gazetteer(folder).names == fresh.names and places._read_cache(cache) is not None

    monkeypatch.setenv("GEOLOC_CACHE_DIR", str(tmp_path / "a-file"))
    (tmp_path / "a-file").write_text("not a folder")
    assert places._Gazetteer(folder).names == fresh.names  # nothing can be cached there: answers all the same
