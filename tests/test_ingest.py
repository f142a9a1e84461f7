"""Ingest: EXIF GPS and coordinates read strictly, photos decoded within limits, sources listed and read
without trusting the names they give (the hostile cases end to end are in test_hostile_input)."""

import csv
import io
import math
import os
import socket

import pytest
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

from geoloc.ingest import exif_gps
from geoloc.ingest.coordinates import GpsError, parse_decimal, validate_coordinates
from geoloc.ingest.files import FileSkip, ReadPolicy, read_bounded
from geoloc.ingest.originals import OriginalStore
from geoloc.ingest.records import PhotoRecord, Skipped, point_id
from geoloc.ingest.sources import SourceError, entry_name, iter_source, load_photo, read_photo_file
from tests.hostile_files import bomb_png, finishes
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


@pytest.mark.parametrize("lat,lon", [
    ((IFDRational(48, 0), 0.0, 0.0), (2.0, 0.0, 0.0)),  # x/0 degrees
    ((IFDRational(0, 0), 0.0, 0.0), (2.0, 0.0, 0.0)),  # 0/0 degrees: no value, not 0
    ((48.0, 0.0, 0.0), (IFDRational(0, 0), IFDRational(0, 0), IFDRational(0, 0))),
    ((48.0, IFDRational(5, 0), 0.0), (2.0, 0.0, 0.0)),  # x/0 minutes
])
def test_zero_denominators_in_degrees_or_of_nonzero_values_are_invalid(lat, lon):
    assert load_photo("p", photo_bytes({1: "N", 2: lat, 3: "E", 4: lon})).reason == "invalid_gps"


@pytest.mark.parametrize("lat_ref,lon_ref", [("X", "E"), ("N", "Q"), ("NS", "E"), ("N", "N"), ("E", "E"),
                                             (b"Z", "E"), ("N", "1")])
def test_unknown_reference_letters_are_invalid(lat_ref, lon_ref):
    gps = {1: lat_ref, 2: (10.0, 0.0, 0.0), 3: lon_ref, 4: (20.0, 0.0, 0.0)}
    assert load_photo("p", photo_bytes(gps)).reason == "invalid_gps"


def test_reference_letters_in_either_case_and_signed_degrees():
    gps = {1: "s", 2: (10.0, 30.0, 0.0), 3: "w", 4: (20.0, 15.0, 0.0)}
    assert located(load_photo("p", photo_bytes(gps))) == pytest.approx((-10.5, -20.25))
    # signed rationals cannot be written as EXIF GPS by Pillow, but other writers sign the degrees
    assert exif_gps._degrees((-10.0, 30.0, 0.0), None, {"N": 1, "S": -1}) == -10.5
    assert exif_gps._degrees((-10.0, 30.0, 0.0), "S", {"N": 1, "S": -1}) == -10.5
    with pytest.raises(GpsError, match="invalid_gps"):  # signed south, yet labelled north
        exif_gps._degrees((-10.0, 30.0, 0.0), "N", {"N": 1, "S": -1})


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


@pytest.mark.parametrize("text,value", [("40.7", 40.7), (" -74.0 ", -74.0), ("+1", 1.0), (".5", 0.5), ("5.", 5.0),
                                        ("007", 7.0), (10, 10.0), (-1.25, -1.25)])
def test_plain_decimals_are_coordinates(text, value):
    assert parse_decimal(text) == value


@pytest.mark.parametrize("text", ["1_0", "\u0661\u0660", "\uff11\uff10", "\u0967", "nan", "NaN", "inf", "-Infinity",
                                  "1e1", "0x10", "", " ", "1,5", "10\u00b0", "1.2.3", "--1", "\u00a010", True, None,
                                  math.nan, math.inf, b"10"])
def test_anything_but_plain_ascii_decimals_is_refused(text):
    with pytest.raises(GpsError, match="invalid_coordinates"):
        parse_decimal(text)


def test_corrupt_and_truncated_photos_are_skipped():
    good = photo_bytes({1: "N", 2: (1.0, 0.0, 0.0), 3: "E", 4: (1.0, 0.0, 0.0)}, size=(256, 256))
    assert load_photo("p", b"not an image").reason == "undecodable_image"
    assert load_photo("p", good[: len(good) // 2]).reason == "undecodable_image"
    assert load_photo("p", good, max_pixels=100).reason == "too_many_pixels"


def _credited_jpeg(artist) -> bytes:
    image = Image.new("RGB", (32, 32), "red")
    exif = image.getexif()
    exif[0x013B] = artist
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif)
    return out.getvalue()


def test_the_photographer_is_the_manifest_column_else_exif_artist():
    def credit(artist, given=None):
        return load_photo("p", _credited_jpeg(artist), 1, 2, given).extra.get("photographer")

    assert credit(" Jane Doe\x00 ") == "Jane Doe"
    assert credit("Jane Doe", {"photographer": " Ann\t Roe "}) == "Ann Roe"  # the manifest's, cleaned alike
    assert credit("Jane Doe", {"photographer": "  "}) == "Jane Doe"  # a blank column names nobody
    assert credit("José Ñ".encode("utf-8")) == "José Ñ" and credit("José".encode("latin-1")) == "José"
    assert credit("x\n\x1b[31mred") == "x [31mred"  # control characters never reach a payload
    assert credit("   ") is None and len(credit("x" * 5000)) == 200
    assert load_photo("p", photo_bytes({}, size=(32, 32)), 1, 2).extra == {}


def test_decompression_bombs_are_too_many_pixels_whatever_the_limit():
    bomb = bomb_png(20000, 20000)  # 400 megapixels in 50 kB: Pillow itself refuses it at open
    assert len(bomb) < 100_000
    assert load_photo("p", bomb, 1, 1).reason == "too_many_pixels"
    assert load_photo("p", bomb, 1, 1, max_pixels=10**12).reason == "too_many_pixels"


def test_only_photo_decoders_run_whatever_the_bytes_claim():
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(buffer, "GIF")
    assert load_photo("p", buffer.getvalue(), 1, 1).reason == "undecodable_image"
    assert load_photo("p", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", 1, 1).reason == "undecodable_image"


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
    assert x.extra == {"photographer": "alice", "caption": "a street"}  # no store: nothing is kept
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


def _skip_reason(path, policy=ReadPolicy()):
    def read():
        try:
            read_bounded(path, policy)
        except FileSkip as exc:
            return str(exc)
        return None
    return finishes(read)


def test_only_regular_files_are_read_and_nothing_blocks(tmp_path):
    os.mkfifo(tmp_path / "fifo.jpg")
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    (tmp_path / "folder.jpg").mkdir()
    (tmp_path / "to_fifo.jpg").symlink_to(tmp_path / "fifo.jpg")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "sock.jpg"))
    for name in ("fifo.jpg", "zero.jpg", "folder.jpg", "to_fifo.jpg", "sock.jpg"):
        assert _skip_reason(tmp_path / name) == "not_a_regular_file", name
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    assert _skip_reason(tmp_path / "loop.jpg") == "unreadable_file"
    assert _skip_reason(tmp_path / "dangling.jpg") == "missing_file"
    assert _skip_reason(str(tmp_path / "nul\0.jpg")) == "unreadable_file"


def test_reads_are_bounded_in_bytes(tmp_path):
    path = write_photo(tmp_path / "a.jpg", 10, 20)
    size = path.stat().st_size
    assert read_bounded(path, ReadPolicy(max_bytes=size)) == path.read_bytes()
    assert _skip_reason(path, ReadPolicy(max_bytes=size - 1)) == "file_too_large"
    assert read_photo_file("a.jpg", path, policy=ReadPolicy(max_bytes=size - 1)).reason == "file_too_large"


def test_with_roots_every_file_must_resolve_inside_one(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    inside = write_photo(root / "in" / "a.jpg", 10, 20)
    secret = write_photo(outside / "secret.jpg", 10, 20)
    (root / "escape.jpg").symlink_to(secret)
    (root / "in" / "alias.jpg").symlink_to(inside)
    (root / "outdir").symlink_to(outside, target_is_directory=True)
    (root / "zero.jpg").symlink_to("/dev/zero")
    policy = ReadPolicy(roots=(root.resolve(),))
    for path in (secret, root / "in" / ".." / ".." / "outside" / "secret.jpg", root / "escape.jpg",
                 root / "outdir" / "secret.jpg", root / "zero.jpg", outside / "missing.jpg"):
        assert _skip_reason(path, policy) == "outside_import_root", path
    assert read_bounded(root / "in" / "alias.jpg", policy) == inside.read_bytes()
    assert read_bounded(root / "escape.jpg", ReadPolicy()) == secret.read_bytes()  # no roots: the user's own disk
    assert _skip_reason(inside, ReadPolicy(roots=())) == "outside_import_root"


def test_a_folder_lists_every_entry_and_enters_no_symlinked_folder(tmp_path):
    write_photo(tmp_path / "photos" / "a.jpg", 10, 20)
    write_photo(tmp_path / "elsewhere" / "b.jpg", 11, 21)
    os.mkfifo(tmp_path / "photos" / "fifo.jpg")
    (tmp_path / "photos" / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "photos" / "linked.jpg").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    results = finishes(lambda: {r.source: getattr(r, "reason", None) for r in iter_source(tmp_path / "photos")})
    assert results == {"a.jpg": None, "fifo.jpg": "not_a_regular_file", "linked": "unsupported_type",
                       "linked.jpg": "not_a_regular_file"}


def test_a_manifest_that_is_not_utf8_names_the_file_and_the_line(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_bytes("filename,lat,lon\nx.jpg,1,2\ncaf\u00e9.jpg,1,2\n".encode("latin-1"))
    with pytest.raises(SourceError, match=rf"^{manifest}, line 3: not UTF-8"):
        list(iter_source(manifest))
    manifest.write_bytes(b"filename,lat,lon\n" + b"x" * (1 << 20) + b"\n")
    with pytest.raises(SourceError, match=rf"^{manifest}, line 2: longer than"):
        list(iter_source(manifest))
    manifest.write_bytes("\ufefffilename,lat,lon\ncaf\u00e9.jpg,1,2\n".encode())  # UTF-8 with a byte order mark
    assert [r.source for r in iter_source(manifest)] == ["caf\u00e9.jpg"]


def test_a_manifest_that_is_not_a_regular_file_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "m.csv")
    with pytest.raises(SourceError, match="not_a_regular_file"):
        finishes(lambda: list(iter_source(tmp_path / "m.csv")))


def test_manifest_names_in_the_collection_are_never_absolute(tmp_path):
    manifest = tmp_path / "sets" / "m.csv"
    assert entry_name(manifest, "img/x.jpg") == "img/x.jpg"
    assert entry_name(manifest, "../x.jpg") == "../x.jpg"
    assert entry_name(manifest, str(tmp_path / "sets" / "img" / "x.jpg")) == "img/x.jpg"
    assert entry_name(manifest, "/srv/photos/2019/x.jpg") == "x.jpg"


def test_with_a_store_usable_photos_are_kept_by_digest(tmp_path):
    store = OriginalStore(tmp_path / "store")
    write_photo(tmp_path / "src" / "a.jpg", 10, 20)
    write_photo(tmp_path / "src" / "none.jpg")  # no GPS: not kept
    results = {r.source: r for r in iter_source(tmp_path / "src", store=store)}
    kept = results["a.jpg"]
    assert kept.extra == {"original": store.name(kept.sha256)}
    assert store.find(kept.sha256).read_bytes() == (tmp_path / "src" / "a.jpg").read_bytes()
    assert sorted(p.name for p in (tmp_path / "store").rglob("*") if p.is_file()) == [kept.sha256, f"{kept.sha256}.thumb.jpg"]
    for not_a_digest in ("../../etc/passwd", kept.sha256.upper(), "", None, "ab" * 31):
        assert store.find(not_a_digest) is None
