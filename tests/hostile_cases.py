"""The kinds of hostile input, one Case each (tests/hostile_corpus.py says how a case is built and read):
for every ingest path, the exact outcome of each photo, or why the kind cannot reach that path."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

from PIL.TiffImagePlugin import IFDRational

from tests.hostile_corpus import (EXIF_ONLY, INDEXED, MANIFEST_ONLY, NA, NOT_BYTES, NUL_FS, ROW, Case, File, Kit,
                                  Part, Row, bad, coordinates, files_case, gps, named, one, photo, special,
                                  symlinks)
from tests.hostile_files import (BAD_HEIF, BAD_TIFF, BAD_WEBP, EPS, ZERO, bomb_png, jpeg_bad_tables, jpeg_claiming,
                                 malformed_exif_jpeg, png_corrupt_data, png_claiming)

N, E = (10.0, 0.0, 0.0), (20.0, 0.0, 0.0)


def _socket(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))


def _device(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 5))  # /dev/zero's numbers, inside the root


def _locked(d: Path, kit: Kit) -> dict:
    (d / "locked.jpg").write_bytes(kit.photos.photo())
    (d / "locked.jpg").chmod(0)
    return {"locked.jpg": UNREADABLE}


def _half(kit: Kit) -> bytes:
    data = kit.photos.noisy_jpeg()
    return data[: len(data) // 2]


def _escapes(d: Path, kit: Kit) -> dict:
    """A symlink out of the root, and a chain of two (through a hidden one, which a folder does not list)."""
    (d / ".hop.jpg").symlink_to(kit.outside_photo(f"{d.parent.name}-chained.jpg"))
    return {"escape.jpg": (kit.outside_photo(f"{d.parent.name}-escape.jpg"), (INDEXED, "outside_import_root")),
            "chain.jpg": (".hop.jpg", (INDEXED, "outside_import_root"))}


def _inside(d: Path, kit: Kit) -> dict:
    target = kit.root / "elsewhere" / f"{d.parent.name}-{d.name}.jpg"
    target.parent.mkdir(exist_ok=True)
    target.write_bytes(kit.photos.photo())
    return {"inside.jpg": (target, INDEXED)}


def _directories(d: Path, kit: Kit) -> dict:
    (d / "album.jpg").mkdir()
    (d / "album.jpg" / "inner.jpg").write_bytes(kit.photos.photo())
    (d / "link.jpg").symlink_to(d / "album.jpg", target_is_directory=True)
    return {"album.jpg/inner.jpg": INDEXED, "link.jpg": "not_a_regular_file"}


def _directory_rows(d: Path, kit: Kit) -> list[Row]:
    _directories(d, kit)
    return [Row("album.jpg", "1", "1", "not_a_regular_file"), Row("link.jpg", "1", "1", "not_a_regular_file")]


def _absolute_rows(d: Path, kit: Kit) -> list[Row]:
    (d / "in.jpg").write_bytes(kit.photos.photo())
    out = kit.outside_photo("absolute-out.jpg")
    return [Row(str(d / "in.jpg")), Row(str(out), expect=(INDEXED, "outside_import_root"), source="absolute-out.jpg")]


def _dotdot_rows(d: Path, kit: Kit) -> list[Row]:
    (d / "sub").mkdir()
    (d / "ok.jpg").write_bytes(kit.photos.photo())
    out = os.path.relpath(kit.outside_photo("dotdot-out.jpg"), d)
    return [Row("sub/../ok.jpg"), Row(out, expect=(INDEXED, "outside_import_root"))]


def _rows_of(d: Path, kit: Kit, rows: list[Row], photos: int) -> list[Row]:
    for i in range(photos):
        (d / f"r{i}.jpg").write_bytes(kit.photos.photo())
    return rows


def _duplicates(d: Path, kit: Kit) -> dict:
    data = kit.photos.photo()
    (d / "a.jpg").write_bytes(data)
    (d / "b.jpg").write_bytes(data)
    return {"a.jpg": INDEXED, "b.jpg": "duplicate_photo"}


def _duplicate_parts(kit: Kit) -> list[Part]:
    data = kit.photos.photo()
    return [Part("a.jpg", data), Part("b.jpg", data, expect="duplicate_photo")]


UNREADABLE = INDEXED if os.geteuid() == 0 else "unreadable_file"  # root reads a chmod 000 file all the same
TOO_MANY = "too_many_pixels"
UNDECODABLE = "undecodable_image"
INVALID = "invalid_coordinates"

CASES = [
    one("good_jpeg", "ok.jpg", photo()),
    one("truncated_jpeg", "cut.jpg", _half, UNDECODABLE),
    one("corrupt_jpeg_tables", "tables.jpg", lambda kit: jpeg_bad_tables(kit.photos.noisy_jpeg()), UNDECODABLE),
    one("jpeg_marker_then_garbage", "garbage.jpg", lambda kit: b"\xff\xd8\xff\xe0" + os.urandom(512), UNDECODABLE),
    one("zero_byte_file", "empty.jpg", lambda kit: b"", "empty_file"),
    one("text_renamed_jpg", "notes.jpg", lambda kit: b"Meeting notes, not a photo.\n" * 20, UNDECODABLE),
    one("postscript_renamed_jpg", "page.jpg", lambda kit: EPS, UNDECODABLE),
    one("gif_renamed_jpg", "anim.jpg", photo(fmt="GIF", lat=None), UNDECODABLE),
    one("good_png", "ok.png", photo(fmt="PNG")),
    one("corrupt_png_data", "broken.png", bad(png_corrupt_data, "PNG"), UNDECODABLE),
    one("good_webp", "ok.webp", photo(fmt="WEBP")),
    one("bad_webp", "bad.webp", lambda kit: BAD_WEBP, UNDECODABLE),
    one("good_tiff", "ok.tif", photo(fmt="TIFF")),
    one("bad_tiff", "bad.tiff", lambda kit: BAD_TIFF, UNDECODABLE),
    one("good_heif", "ok.heic", photo(fmt="HEIF")),
    one("bad_heif", "bad.heic", lambda kit: BAD_HEIF, UNDECODABLE),
    files_case("animated_and_multi_frame", File("anim.gif", photo(fmt="GIF", lat=None, frames=3), "unsupported_type",
                                                "1", "1", upload=UNDECODABLE),
               File("anim.webp", photo(fmt="WEBP", frames=3)), File("anim.png", photo(fmt="PNG", frames=3)),
               File("pages.tif", photo(fmt="TIFF", frames=3))),
    one("decompression_bomb", "bomb.png", lambda kit: bomb_png(20000, 20000), TOO_MANY),
    files_case("huge_declared_dimensions", File("huge.jpg", bad(lambda b: jpeg_claiming(b, 60000, 60000)), TOO_MANY),
               File("huge.png", lambda kit: png_claiming(100000, 100000), TOO_MANY)),
    one("over_pixel_limit", "large.jpg", photo(size=(2100, 2000)), TOO_MANY),
    one("over_byte_limit", "heavy.jpg", lambda kit: kit.photos.photo() + b"\0" * kit.max_bytes, "file_too_large"),
    files_case("tiny_1x1", File("dot.jpg", photo(size=(1, 1))), File("dot.png", photo(fmt="PNG", size=(1, 1)))),
    one("extreme_aspect_ratio", "sliver.png", photo(fmt="PNG", size=(1, 4000)), "extreme_aspect_ratio"),
    one("cmyk_jpeg", "cmyk.jpg", photo(mode="CMYK")),
    one("sixteen_bit_png", "deep.png", photo(fmt="PNG", mode="I;16")),
    files_case("palette_and_alpha", File("p.png", photo(fmt="PNG", mode="P")),
               File("la.png", photo(fmt="PNG", mode="LA")),
               File("rgba.webp", photo(fmt="WEBP", mode="RGBA"))),
    files_case("exif_orientation", File("turned.jpg", photo(orientation=6)), File("bogus.jpg", photo(orientation=9))),
    one("trailing_garbage", "tail.jpg", lambda kit: kit.photos.photo() + os.urandom(256)),
    files_case("content_not_suffix_decides", File("png.jpg", photo(fmt="PNG")), File("jpeg.png", photo())),
    files_case("unsupported_suffix", File("photo.txt", photo(), "unsupported_type", upload=INDEXED),
               File("noext", photo(), "unsupported_type", upload=INDEXED)),
    one("malformed_exif_block", "exif.jpg", bad(malformed_exif_jpeg), "no_gps"),
    one("no_gps", "nogps.jpg", photo(lat=None), "no_gps"),
    one("coordinates_given", "placed.jpg", photo(lat=None), lat="12.5", lon="-3.25", folder=EXIF_ONLY),
    gps("gps_zero_denominators", "invalid_gps", {1: "N", 2: (IFDRational(10, 0), 0.0, 0.0), 3: "E", 4: E},
        {1: "N", 2: (10.0, IFDRational(5, 0), 0.0), 3: "E", 4: E}),
    files_case("gps_degrees_0_0",
               File("deg.jpg", photo(gps={1: "N", 2: (ZERO, 0.0, 0.0), 3: "E", 4: E}), "invalid_gps"),
               File("min.jpg", photo(gps={1: "N", 2: (10.0, ZERO, ZERO), 3: "E", 4: E}))),
    gps("gps_unknown_reference", "invalid_gps", {1: "X", 2: N, 3: "E", 4: E}, {1: "N", 2: N, 3: "Q", 4: E},
        {1: "NS", 2: N, 3: "E", 4: E}),
    gps("gps_out_of_range", INVALID, {1: "N", 2: (95.0, 0.0, 0.0), 3: "E", 4: E},
        {1: "N", 2: N, 3: "W", 4: (200.0, 0.0, 0.0)}),
    gps("gps_minutes_over_60", "invalid_gps", {1: "N", 2: (10.0, 75.0, 0.0), 3: "E", 4: E}),
    gps("gps_null_island", "null_island", {1: "N", 2: (0.0, 0.0, 0.0), 3: "E", 4: (0.0, 0.0, 0.0)}),
    coordinates("coordinates_plain_forms", INDEXED, (" +12.5 ", "\t-3.25"), (".5", "-0."), ("-90", "180")),
    coordinates("coordinates_nan_inf", INVALID, ("nan", "5"), ("5", "inf"), ("-Infinity", "5"), ("NaN", "NaN")),
    coordinates("coordinates_underscore", INVALID, ("1_0", "5"), ("5", "1_000.5")),
    coordinates("coordinates_non_ascii_digits", INVALID, ("\u0661\u0660", "5"), ("\uff11\uff10", "5"),
                ("5", "\u0967")),
    coordinates("coordinates_exponent_hex", INVALID, ("1e1", "5"), ("0x10", "5"), ("5", "1,5")),
    coordinates("coordinates_out_of_range", INVALID, ("91", "0"), ("0", "181"), ("-90.0001", "5")),
    coordinates("coordinates_null_island", "null_island", ("0", "0"), ("0.0", "-0")),
    coordinates("coordinates_half_given", INVALID, ("12.5", ""), ("", "7")),
    Case("absolute_path", MANIFEST_ONLY, _absolute_rows, lambda kit: [Part("/etc/passwd.jpg", kit.photos.photo())]),
    Case("dotdot_path", MANIFEST_ONLY, _dotdot_rows, lambda kit: [Part("../../../x.jpg", kit.photos.photo())]),
    symlinks("symlink_out_of_root", _escapes),
    symlinks("symlink_inside_root", _inside),
    symlinks("symlink_to_dev_zero", lambda d, kit: {"zero.jpg": ("/dev/zero", ("not_a_regular_file",
                                                                              "outside_import_root"))}),
    symlinks("symlink_to_proc_mem", lambda d, kit: {"mem.jpg": ("/proc/self/mem", ("unreadable_file",
                                                                                  "outside_import_root"))}),
    symlinks("dangling_symlink", lambda d, kit: {"gone.jpg": (d / "never.jpg", "missing_file")}),
    symlinks("symlink_loop", lambda d, kit: {"a.jpg": ("b.jpg", "unreadable_file"),
                                             "b.jpg": ("a.jpg", "unreadable_file")}),
    special("fifo", os.mkfifo, "pipe.jpg", "not_a_regular_file"),
    special("unix_socket", _socket, "sock.jpg", "not_a_regular_file"),
    special("device_node", _device, "dev.jpg", "not_a_regular_file"),
    Case("directory_named_jpg", _directories, _directory_rows, NOT_BYTES),
    Case("unreadable_chmod_000", _locked, lambda d, kit: [Row(n, expect=e) for n, e in _locked(d, kit).items()],
         NOT_BYTES),
    Case("missing_file", MANIFEST_ONLY, lambda d, kit: [Row("nowhere.jpg", "1", "1", "missing_file")], NOT_BYTES),
    Case("empty_filename", MANIFEST_ONLY, lambda d, kit: [Row("", "1", "1", "unsupported_type", ROW)],
         NA("an empty file name makes the part a plain form field: the whole request is refused "
            "(test_an_upload_refused_as_a_whole_adds_nothing)")),
    Case("missing_and_extra_cells", MANIFEST_ONLY,
         lambda d, kit: _rows_of(d, kit, [Row("r0.jpg", None, None), Row("r1.jpg", "5", None, INVALID),
                                          Row("r2.jpg", "1", "2", extra=("x", "y"))], 3),
         NA("the form sends one lat and one lon per photo, or none: a mismatch refuses the whole request "
            "(test_an_upload_refused_as_a_whole_adds_nothing)")),
    Case("duplicate_rows", MANIFEST_ONLY,
         lambda d, kit: _rows_of(d, kit, [Row("r0.jpg", "1", "1"), Row("r0.jpg", "1", "1", "duplicate_photo")], 1),
         _duplicate_parts),
    Case("duplicate_content", _duplicates, lambda d, kit: [Row(n, expect=e) for n, e in _duplicates(d, kit).items()],
         _duplicate_parts),
    named("nul_byte_in_name", ("nul\0.jpg",), NUL_FS, "unreadable_file", {"nul\0.jpg": "nul%00.jpg"}),
    named("over_long_name", ("x" * 300 + ".jpg", "y/" * 2100 + "y.jpg"), NUL_FS, "unreadable_file", uploaded=1),
    named("newline_in_name", ("new\nline.jpg",), sent_as={"new\nline.jpg": "new%0Aline.jpg"}),
    named("unicode_names", ("caf\u00e9-\u5317\u4eac-\U0001f642.jpg", "cafe\u0301.jpg", "\u202egnp.jpg")),
    named("punctuation_in_names", ("back\\slash.jpg", 'quo"te,comma.jpg', "semi;colon %20.jpg"),
          sent_as={'quo"te,comma.jpg': "quo%22te,comma.jpg"}),
    named("hidden_file", (".hidden.jpg",)),
    named("uppercase_suffix", ("UP.JPG", "mixed.JpEg")),
]

# A manifest that cannot be read at all: the command line stops (exit 2) and an import is refused (422),
# each naming the file and what is wrong; a folder or an upload has no manifest to get wrong.
BROKEN_MANIFESTS = {
    "manifest_not_utf8": (b"filename,lat,lon\nc.jpg,1,2\ncaf\xe9.jpg,1,2\n",
                          "line 3: not UTF-8 text (byte 4 of the line); save the manifest as UTF-8"),
    "manifest_binary": (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\n", "line 1: not UTF-8 text (byte 1 of the line)"),
    "manifest_missing_columns": (b"filename,latitude,lon\nx.jpg,1,2\n", "manifest lacks column(s) lat;"),
    "manifest_empty": (b"", "manifest lacks column(s) filename, lat, lon"),
    "manifest_line_too_long": (b"filename,lat,lon\n" + b"a" * (1 << 20) + b"\n", "line 2: longer than 1048576 bytes"),
    "manifest_is_fifo": (None, "the manifest cannot be read (not_a_regular_file)"),
}


def write_broken_manifest(path: Path, content: bytes | None) -> Path:
    if content is None:
        os.mkfifo(path)
    else:
        path.write_bytes(content)
    return path
