"""Hostile bytes for the ingest tests: tiny synthetic photos in every supported format (each one unique, so
no two cases of a corpus share content by accident), and the ways such bytes go bad: truncated, corrupt,
lying about their size or format, decompression bombs, EXIF GPS blocks a strict reader refuses."""

from __future__ import annotations

import io
import itertools
import struct
import threading
import zlib

from PIL import ExifTags, Image
from PIL.TiffImagePlugin import IFDRational
from pillow_heif import register_heif_opener

from tests.photos import gps_block

register_heif_opener()  # HEIF photos are written as well as read

ORIENTATION = 0x0112
ZERO = IFDRational(0, 0)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bomb_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of width x height black pixels: a few kB that decode to width*height/8 bytes."""
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte, then the packed pixels
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def png_claiming(width: int, height: int) -> bytes:
    """A PNG header declaring width x height RGB pixels, followed by a few bytes of them."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\0" * 64))


def jpeg_claiming(data: bytes, width: int, height: int) -> bytes:
    """A JPEG whose frame header (SOF0) is rewritten to declare width x height."""
    at = data.index(b"\xff\xc0") + 5  # marker, segment length, precision, then height and width
    return data[:at] + struct.pack(">HH", height, width) + data[at + 4:]


def png_corrupt_data(data: bytes) -> bytes:
    """The PNG with its image data (IDAT) replaced by a broken zlib stream, under a correct checksum."""
    at = data.index(b"IDAT") - 4
    length = struct.unpack(">I", data[at:at + 4])[0]
    return data[:at] + _chunk(b"IDAT", b"\x78\x9c" + b"\xff\x00\xaa" * 8) + data[at + 12 + length:]


def jpeg_bad_tables(data: bytes) -> bytes:
    """The JPEG with its first Huffman table overwritten: libjpeg refuses it."""
    at = data.index(b"\xff\xc4") + 4
    return data[:at] + b"\xff" * 36 + data[at + 36:]


def malformed_exif_jpeg(data: bytes) -> bytes:
    """A JPEG with an APP1 Exif block whose first IFD lies past its end, before the real segments."""
    body = b"Exif\0\0MM\0*\xff\xff\xff\xf0ab"
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + data[2:]


BAD_WEBP = b"RIFF\x20\0\0\0WEBPVP8 \x14\0\0\0" + b"\x9d\x01\x2a" + b"\x13" * 17
BAD_TIFF = b"II*\0\xf0\xff\xff\x7f" + b"\0" * 32  # first IFD 2 GB past the end
BAD_HEIF = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0\0\0\x10meta" + b"\x11" * 8
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"


def finishes(fn, timeout_s: float = 10):
    """fn's result (or its exception), failing instead of hanging the suite if it has not returned in time."""
    result = {}

    def run():
        try:
            result["value"] = fn()
        except Exception as exc:
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert not thread.is_alive(), f"still blocked after {timeout_s} s"
    if "error" in result:
        raise result["error"]
    return result["value"]


class Photos:
    """Makes photos none of which shares its bytes with another: each is painted in a colour not used before
    (levels 32 apart, far beyond what JPEG quantisation could merge)."""

    def __init__(self):
        self._colours = itertools.product(range(16, 256, 32), repeat=3)

    def image(self, mode: str = "RGB", size=(48, 32)) -> Image.Image:
        rgb = next(self._colours)
        fill = {"RGB": rgb, "RGBA": (*rgb, 200), "CMYK": (*rgb, 30), "L": rgb[0], "I;16": rgb[0] * 250,
                "P": rgb[0], "LA": (rgb[0], 128)}[mode]
        return Image.new(mode, size, fill)

    def photo(self, lat: float | None = 48.85, lon: float | None = 2.35, fmt: str = "JPEG", gps: dict | None = None,
              orientation: int | None = None, mode: str = "RGB", size=(48, 32), frames: int = 1) -> bytes:
        """A photo with EXIF GPS at (lat, lon), or the given GPS block, or none (lat None and no gps)."""
        exif = Image.Exif()
        if gps is not None or lat is not None:
            exif[ExifTags.IFD.GPSInfo] = gps if gps is not None else gps_block(lat, lon)
        if orientation is not None:
            exif[ORIENTATION] = orientation
        images = [self.image(mode, size) for _ in range(frames)]
        buffer = io.BytesIO()
        params = {"exif": exif.tobytes()} if len(exif) else {}
        if frames > 1:
            params.update(save_all=True, append_images=images[1:])
        images[0].save(buffer, fmt, **params)
        return buffer.getvalue()

    def noisy_jpeg(self) -> bytes:
        """A JPEG with real entropy-coded data (noise), large enough to cut in half."""
        buffer = io.BytesIO()
        exif = Image.Exif()
        exif[ExifTags.IFD.GPSInfo] = gps_block(35.68, 139.69)
        Image.effect_noise((128, 128), 60).convert("RGB").save(buffer, "JPEG", exif=exif.tobytes())
        return buffer.getvalue()
