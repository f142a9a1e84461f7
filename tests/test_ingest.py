import csv
import math

import pytest
from PIL.TiffImagePlugin import IFDRational

from geoloc.ingest.exif_gps import GpsError, validate_coordinates
from geoloc.ingest.records import PhotoRecord, Skipped, point_id
from geoloc.ingest.sources import SourceError, iter_source, load_photo
from tests.photos import photo_bytes, write_photo


def located(result):
    assert isinstance(result, PhotoRecord), getattr(result, "reason", result)
    return result.lat, result.lon


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp", ".tif"])
def test_every_supported_format_reads_gps(suffix):
    lat, lon = located(load_photo("p", photo_bytes({1: "S", 2: (33.0, 51.0, 31.14), 3: "W", 4: (70.0, 30.0, 0.0)},
                                                   suffix=suffix)))
    assert lat == pytest.approx(-(33 + 51 / 60 + 31.14 / 3600))
    assert lon == pytest.approx(-70.5)


def test_rationals_and_zero_denominators():
    gps = {1: "N", 2: (IFDRational(48, 1), IFDRational(51, 1), IFDRational(0, 0)),
           3: "E", 4: (IFDRational(2, 1), IFDRational(2100, 100), IFDRational(0, 0))}
    assert located(load_photo("p", photo_bytes(gps))) == pytest.approx((48.85, 2.35))


def test_zero_denominator_in_degrees_is_invalid():
    gps = {1: "N", 2: (IFDRational(48, 0), 0.0, 0.0), 3: "E", 4: (2.0, 0.0, 0.0)}
    assert load_photo("p", photo_bytes(gps)).reason == "invalid_gps"


def test_missing_refs_read_as_north_and_east():
    assert located(load_photo("p", photo_bytes({2: (10.0, 30.0, 0.0), 4: (20.0, 15.0, 0.0)}))) == \
        pytest.approx((10.5, 20.25))


@pytest.mark.parametrize("gps,reason", [
    (None, "no_gps"),
    ({1: "N", 2: (10.0, 0.0, 0.0)}, "no_gps"),
    ({1: "N", 2: (95.0, 0.0, 0.0), 3: "E", 4: (10.0, 0.0, 0.0)}, "invalid_coordinates"),
    ({1: "N", 2: (10.0, 0.0, 0.0), 3: "E", 4: (181.0, 0.0, 0.0)}, "invalid_coordinates"),
    ({1: "N", 2: (10.0, 75.0, 0.0), 3: "E", 4: (10.0, 0.0, 0.0)}, "invalid_gps"),
    ({1: "N", 2: (0.0, 0.0, 0.0), 3: "E", 4: (0.0, 0.0, 0.0)}, "null_island"),
])
def test_unusable_gps_is_skipped_with_its_reason(gps, reason):
    result = load_photo("p", photo_bytes(gps))
    assert isinstance(result, Skipped) and result.reason == reason


@pytest.mark.parametrize("lat,lon", [("nan", "1"), ("", "3"), ("abc", "1"), (91, 0), (0, -180.5), (math.inf, 0)])
def test_bad_manifest_coordinates(lat, lon):
    with pytest.raises(GpsError):
        validate_coordinates(lat, lon)


def test_corrupt_and_truncated_photos_are_skipped():
    good = photo_bytes({1: "N", 2: (1.0, 0.0, 0.0), 3: "E", 4: (1.0, 0.0, 0.0)}, size=(256, 256))
    assert load_photo("p", b"not an image").reason == "undecodable_image"
    assert load_photo("p", good[: len(good) // 2]).reason == "undecodable_image"
    assert load_photo("p", good, max_pixels=100).reason == "too_many_pixels"


def test_folder_is_recursive_and_one_bad_file_never_stops_the_run(tmp_path):
    write_photo(tmp_path / "a.jpg", 48.85, 2.35)
    write_photo(tmp_path / "sub" / "deeper" / "b.png", -33.86, 151.2)
    write_photo(tmp_path / "c.jpg")  # no GPS
    (tmp_path / "d.jpg").write_bytes(b"\xff\xd8 corrupt")
    (tmp_path / "notes.txt").write_text("hello")
    results = {r.source: r for r in iter_source(tmp_path)}
    assert set(results) == {"a.jpg", "sub/deeper/b.png", "c.jpg", "d.jpg", "notes.txt"}
    assert located(results["sub/deeper/b.png"]) == pytest.approx((-33.86, 151.2), abs=1e-4)
    assert results["c.jpg"].reason == "no_gps"
    assert results["d.jpg"].reason == "undecodable_image"
    assert results["notes.txt"].reason == "unsupported_type"


def test_manifest_keeps_extra_columns_and_reports_bad_rows(tmp_path):
    write_photo(tmp_path / "img" / "x.jpg")  # no EXIF: the manifest gives the position
    write_photo(tmp_path / "img" / "y.jpg", colour=(1, 2, 3))
    write_photo(tmp_path / "images" / "z.jpg", colour=(9, 9, 9))
    manifest = tmp_path / "m.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "lat", "lon", "photographer", "caption"])
        writer.writerow(["img/x.jpg", "40.7", "-74.0", "alice", "a street"])
        writer.writerow(["z.jpg", "1", "2", "dan", ""])  # found in the images/ folder beside the manifest
        writer.writerow(["img/missing.jpg", "1", "1", "bob", ""])
        writer.writerow(["img/y.jpg", "north", "1", "carol", ""])
    results = {r.source: r for r in iter_source(manifest)}
    x = results["img/x.jpg"]
    assert located(x) == (40.7, -74.0)
    assert x.extra == {"photographer": "alice", "caption": "a street",
                       "original": str((tmp_path / "img" / "x.jpg").resolve())}
    assert located(results["z.jpg"]) == (1.0, 2.0)
    assert results["img/missing.jpg"].reason == "missing_file"
    assert results["img/y.jpg"].reason == "invalid_coordinates"


def test_manifest_without_required_columns_is_a_source_error(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("name,latitude,longitude\nx.jpg,1,2\n")
    with pytest.raises(SourceError, match="lacks column"):
        list(iter_source(manifest))
    with pytest.raises(SourceError, match="no such file"):
        list(iter_source(tmp_path / "nowhere"))


def test_point_ids_are_deterministic_per_collection():
    assert point_id("news", "ab" * 32) == point_id("news", "ab" * 32)
    assert point_id("news", "ab" * 32) != point_id("archive", "ab" * 32)
