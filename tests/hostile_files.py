"""Hostile sources for the ingest tests: a folder and a manifest inside an import root that try every way
out of it, every file that could block or exhaust a reader, and every coordinate a strict reader refuses."""

from __future__ import annotations

import csv
import os
import socket
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

from PIL.TiffImagePlugin import IFDRational

from tests.photos import write_photo


def bomb_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of width x height black pixels: a few kB that decode to width*height/8 bytes."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte, then the packed pixels
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


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


@dataclass
class Hostile:
    folder: Path  # photos/: read it whole
    manifest: Path  # sets/manifest.csv: names files in photos/, beside it, and outside the root
    latin1: Path  # sets/latin1.csv: a manifest that is not UTF-8 (its line 3)
    fifo_manifest: Path  # sets/fifo.csv: a FIFO named like a manifest
    originals: dict[str, bytes]  # what each photo that may be indexed holds, by its name in the collection
    leaving: str  # the manifest's relative name that climbs out of the root
    outside: Path  # where the photos the tree escapes to live


def build(root: Path, outside: Path, max_bytes: int) -> Hostile:
    """The hostile tree under `root` (the import root), with the photos it escapes to under `outside`."""
    photos, sets = root / "photos", root / "sets"
    good = {"a.jpg": write_photo(photos / "a.jpg", 48.85, 2.35, colour=(200, 10, 10)),
            "sub/b.jpg": write_photo(photos / "sub" / "b.jpg", -33.86, 151.2, colour=(10, 200, 10))}
    secrets = [write_photo(outside / f"secret{i}.jpg", 40.0 + i, 10.0 + i, colour=(10, 10, 60 * i)) for i in range(3)]
    (photos / "escape.jpg").symlink_to(secrets[2])
    (photos / "zero.jpg").symlink_to("/dev/zero")
    (photos / "linkdir.jpg").symlink_to(photos / "sub", target_is_directory=True)
    os.mkfifo(photos / "fifo.jpg")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(photos / "sock.jpg"))
    (photos / "bomb.png").write_bytes(bomb_png(20000, 20000))
    (photos / "big.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * max_bytes)
    write_photo(photos / "zero_degrees.jpg", colour=(1, 1, 1),
                gps={1: "N", 2: (IFDRational(0, 0), 0.0, 0.0), 3: "E", 4: (10.0, 0.0, 0.0)})
    write_photo(photos / "bad_ref.jpg", colour=(2, 2, 2), gps={1: "X", 2: (10.0, 0.0, 0.0), 3: "E", 4: (10.0, 0.0, 0.0)})

    good["c.jpg"] = write_photo(sets / "c.jpg", colour=(30, 30, 30))  # no EXIF: the manifest places it
    for i, name in enumerate(("d.jpg", "e.jpg", "f.jpg")):
        write_photo(sets / name, colour=(90 + i, 90, 90))
    (sets / "folder.jpg").mkdir()
    rows = [("../photos/a.jpg", "", ""), ("c.jpg", "12.5", "-3.25"),
            (str(secrets[0]), "1", "1"), (os.path.relpath(secrets[1], sets), "1", "1"),
            ("../photos/escape.jpg", "2", "2"), ("../photos/fifo.jpg", "1", "1"), ("../photos/zero.jpg", "1", "1"),
            ("folder.jpg", "1", "1"), ("d.jpg", "1_0", "5"), ("e.jpg", "\u0661\u0660", "5"), ("f.jpg", "nan", "5"),
            ("../photos/bomb.png", "1", "1"), ("../photos/big.jpg", "1", "1")]
    with (sets / "manifest.csv").open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("filename", "lat", "lon"), *rows])
    (sets / "latin1.csv").write_bytes("filename,lat,lon\nc.jpg,1,2\ncaf\u00e9.jpg,1,2\n".encode("latin-1"))
    os.mkfifo(sets / "fifo.csv")
    originals = {name: path.read_bytes() for name, path in good.items()}
    originals["../photos/a.jpg"] = originals["a.jpg"]
    originals.update({"escape.jpg": secrets[2].read_bytes(), "../photos/escape.jpg": secrets[2].read_bytes(),
                      "secret0.jpg": secrets[0].read_bytes(), rows[3][0]: secrets[1].read_bytes()})
    return Hostile(photos, sets / "manifest.csv", sets / "latin1.csv", sets / "fifo.csv", originals, rows[3][0],
                   outside)
