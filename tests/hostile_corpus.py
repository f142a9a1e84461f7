"""The hostile corpus: each kind of bad input built for every ingest path it applies to, with the exact
outcome expected of each photo (indexed, or the skip reason), and the reason when a kind cannot apply.

The paths: the command line and an API import read a folder (`folder`) or a CSV manifest (`manifest`)
from disk, the first anywhere and the second only inside GEOLOC_IMPORT_ROOTS; an upload (`upload`) sends
bytes with a file name and `lat`/`lon` form fields. An outcome is one string for both readers of disk, or
(command line, API import) where the import roots make them differ.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.hostile_files import Photos

INDEXED = "indexed"
Expect = str | tuple[str, str]


class NA(str):
    """Why a kind of input cannot reach this path."""


@dataclass(frozen=True)
class Row:
    """A manifest row; `name` relative to the case's folder (or absolute); `source` when the collection
    names the photo otherwise than `<kind>/<name>` (ROW: "row N", N the row's line in its manifest). A cell
    given as None is left out of the row; `extra`: cells past the header's columns."""

    name: str
    lat: str | None = ""
    lon: str | None = ""
    expect: Expect = INDEXED
    source: str | None = None
    extra: tuple = field(default=())


@dataclass(frozen=True)
class Part:
    """A photo of an upload, and the name the job records it under when not its file name."""

    filename: str
    data: bytes
    lat: str = ""
    lon: str = ""
    expect: str = INDEXED
    source: str | None = None


@dataclass
class Kit:
    photos: Photos
    root: Path  # the import root
    outside: Path  # a folder outside it
    max_bytes: int

    def outside_photo(self, name: str) -> Path:
        path = self.outside / name
        path.write_bytes(self.photos.photo())
        return path


ROW = "<row number>"
Folder = Callable[[Path, Kit], dict[str, Expect]]
Manifest = Callable[[Path, Kit], list[Row]]
Upload = Callable[[Kit], list[Part]]


@dataclass(frozen=True)
class Case:
    kind: str
    folder: Folder | NA
    manifest: Manifest | NA
    upload: Upload | NA


@dataclass(frozen=True)
class File:
    """One file of a case: its name, how its bytes are made, its outcome, and the coordinates a manifest
    row or an upload gives it ("" and "": read EXIF); `upload`: the upload's own outcome when it differs."""

    name: str
    make: Callable[[Kit], bytes]
    expect: Expect = INDEXED
    lat: str = ""
    lon: str = ""
    upload: str | None = None


def files_case(kind: str, *files: File, folder: NA | None = None, upload: NA | None = None) -> Case:
    """A case of plain files, the same bytes-maker on every path."""
    def on_disk(d: Path, kit: Kit) -> None:
        for f in files:
            (d / f.name).write_bytes(f.make(kit))

    def to_folder(d, kit):
        on_disk(d, kit)
        return {f.name: f.expect for f in files}

    def to_manifest(d, kit):
        on_disk(d, kit)
        return [Row(f.name, f.lat, f.lon, f.expect) for f in files]

    def to_upload(kit):
        return [Part(f.name, f.make(kit), f.lat, f.lon, f.upload or f.expect) for f in files]

    return Case(kind, folder or to_folder, to_manifest, upload or to_upload)


def one(kind: str, name: str, make, expect: Expect = INDEXED, **options) -> Case:
    keys = ("lat", "lon", "upload")
    return files_case(kind, File(name, make, expect, **{k: options.pop(k) for k in keys if k in options}),
                      **options)


def coordinates(kind: str, expect: str, *pairs: tuple[str, str]) -> Case:
    """Photos with EXIF at Paris, each given other coordinates by a manifest row or the form fields."""
    files = [File(f"p{i}.jpg", lambda kit: kit.photos.photo(), expect, lat, lon) for i, (lat, lon) in enumerate(pairs)]
    return files_case(kind, *files, folder=EXIF_ONLY)


def gps(kind: str, expect: str, *blocks: dict) -> Case:
    return files_case(kind, *[File(f"g{i}.jpg", lambda kit, b=b: kit.photos.photo(gps=b), expect)
                              for i, b in enumerate(blocks)])


EXIF_ONLY = NA("a folder reads positions from EXIF only: it has no coordinates to give")
NOT_BYTES = NA("an upload sends bytes: there is no such file to send")
NUL_FS = NA("no file system stores a name with a NUL byte or over 255 bytes")
MANIFEST_ONLY = NA("a folder lists each of its files once, by its own name")


def symlinks(kind: str, targets: Callable[[Path, Kit], dict[str, tuple[Path | str, Expect]]]) -> Case:
    """Symlinks named like photos; `targets` makes what they point to: {name: (target, outcome)}."""
    def make(d, kit):
        made = targets(d, kit)
        for name, (target, _) in made.items():
            (d / name).symlink_to(target)
        return {name: expect for name, (_, expect) in made.items()}

    return Case(kind, make, lambda d, kit: [Row(n, "", "", e) for n, e in make(d, kit).items()], NOT_BYTES)


def special(kind: str, make: Callable[[Path], None], name: str, expect: Expect) -> Case:
    """A file-system object that is no photo file (FIFO, socket, device ...), made by `make(path)`."""
    def build(d, _):
        make(d / name)
        return {name: expect}

    return Case(kind, build, lambda d, kit: [Row(n, "", "", e) for n, e in build(d, kit).items()], NOT_BYTES)


def named(kind: str, names: tuple[str, ...], folder: NA | None = None, manifest: Expect = INDEXED,
          sent_as: dict[str, str] | None = None, uploaded: int | None = None) -> Case:
    """Good photos with awkward names (a folder ignores hidden ones); `manifest`: the rows' outcome;
    `sent_as`: how the client library writes a name in the multipart header, which the job records;
    `uploaded`: how many of the names an upload sends (the first ones)."""
    def to_folder(d, kit):
        for name in names:
            (d / name).write_bytes(kit.photos.photo())
        return {name: INDEXED for name in names if not name.startswith(".")}

    def to_manifest(d, kit):
        for name in names:
            if manifest == INDEXED:  # the others cannot be created
                (d / name).write_bytes(kit.photos.photo())
        return [Row(name, expect=manifest) for name in names]

    def to_upload(kit):
        return [Part(name, kit.photos.photo(), source=(sent_as or {}).get(name)) for name in names[:uploaded]]

    return Case(kind, folder or to_folder, to_manifest, to_upload)


def photo(**options) -> Callable[[Kit], bytes]:
    return lambda kit: kit.photos.photo(**options)


def bad(make: Callable[[bytes], bytes], fmt: str = "JPEG") -> Callable[[Kit], bytes]:
    return lambda kit: make(kit.photos.photo(fmt=fmt))


PATHS = ("cli_folder", "cli_manifest", "upload", "import_folder", "import_manifest")
_BUILDER = {"cli_folder": "folder", "import_folder": "folder", "cli_manifest": "manifest",
            "import_manifest": "manifest", "upload": "upload"}


def not_applicable(case: Case, path: str) -> NA | None:
    builder = getattr(case, _BUILDER[path])
    return builder if isinstance(builder, NA) else None


def _pick(expect: Expect, api: bool) -> str:
    return expect[api] if isinstance(expect, tuple) else expect


@dataclass
class Corpus:
    """The corpus on disk: folder/<kind>/ for the folder paths, sets/<kind>.csv (and sets/all.csv, every
    case's rows) for the manifests, beside sets/<kind>/ holding their files; and each case's upload.
    `expected[path][kind]`: the sorted (source, outcome) pairs of every photo the path reports."""

    root: Path
    expected: dict = field(default_factory=lambda: {path: {} for path in PATHS})
    parts: dict = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return self.root / "folder"

    @property
    def sets(self) -> Path:
        return self.root / "sets"

    def manifest(self, kind: str = "all") -> Path:
        return self.sets / f"{kind}.csv"

    def expect(self, path: str, kind: str, pairs) -> None:
        self.expected[path].setdefault(kind, []).extend(pairs)
        self.expected[path][kind].sort()


def _write_manifest(csv_path: Path, rows: list[tuple[str, Row]]) -> list[tuple[str, str, Expect]]:
    """Writes the rows, each named relative to the manifest's folder; (kind, source, outcome) of each."""
    made = []
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(("filename", "lat", "lon"))
        line = 1
        for kind, row in rows:
            absolute = Path(row.name).is_absolute()
            name = row.name if absolute or not row.name else f"{kind}/{row.name}"
            cells = [name, row.lat, row.lon, *row.extra]
            while cells[-1] is None:
                cells.pop()
            writer.writerow(cells)
            line += 1 + sum(str(cell).count("\n") for cell in cells)
            source = row.source or (str(Path(name).relative_to(csv_path.parent)) if absolute else name)
            made.append((kind, f"row {line}" if source == ROW else source, row.expect))
    return made


def build_corpus(cases: list[Case], root: Path, outside: Path, max_bytes: int) -> Corpus:
    kit, corpus, every_row = Kit(Photos(), root, outside, max_bytes), Corpus(root), []
    for case in cases:
        if not isinstance(case.folder, NA):
            (corpus.folder / case.kind).mkdir(parents=True)
            made = case.folder(corpus.folder / case.kind, kit)
            corpus.expect("cli_folder", case.kind, [(f"{case.kind}/{n}", _pick(e, False)) for n, e in made.items()])
            corpus.expect("import_folder", case.kind, [(n, _pick(e, True)) for n, e in made.items()])
        if not isinstance(case.manifest, NA):
            (corpus.sets / case.kind).mkdir(parents=True)
            rows = [(case.kind, row) for row in case.manifest(corpus.sets / case.kind, kit)]
            every_row += rows
            for kind, source, expect in _write_manifest(corpus.manifest(case.kind), rows):
                corpus.expect("import_manifest", kind, [(source, _pick(expect, True))])
        if not isinstance(case.upload, NA):
            corpus.parts[case.kind] = case.upload(kit)
            corpus.expect("upload", case.kind, [(p.source or p.filename, p.expect) for p in corpus.parts[case.kind]])
    for kind, source, expect in _write_manifest(corpus.manifest(), every_row):
        corpus.expect("cli_manifest", kind, [(source, _pick(expect, False))])
    return corpus
