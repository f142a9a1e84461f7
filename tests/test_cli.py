"""The command line as people and scripts drive it: --version, one JSON document from every command that
prints results, `locate FOLDER` in every output format, HEIC photos, re-runs that skip what is indexed,
`drop` that asks first, `prune --dry-run`, and one syntax for list options. Real dev photos, a handful."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import pty
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import ExifTags, Image

import geoloc.ingest.images  # noqa: F401  registers pillow-heif, which also writes HEIC
from geoloc.cli import build_parser, main
from geoloc.cli.formats import COLUMNS
from geoloc.embedding import Embedder
from geoloc.gallery.edge import EdgeGallery
from geoloc.indexing import index_records
from geoloc.ingest.records import point_id
from geoloc.ingest.sources import iter_source
from tests.photos import gps_block
from tests.services import DATA, manifest_rows

RESULTLESS = {"serve", "worker"}  # long-running services: they print logs, not a result


def write_heic(path: Path, row: dict) -> Path:
    """A real dev photo as an iPhone writes it: HEIC with an EXIF GPS block."""
    exif = Image.Exif()
    exif[ExifTags.IFD.GPSInfo] = gps_block(float(row["lat"]), float(row["lon"]))
    Image.open(DATA / "images" / row["filename"]).save(path, "HEIF", exif=exif.tobytes(), quality=80)
    return path


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """Four dev photos (two in a subfolder), one HEIC made from a fifth, and a file that is not a photo."""
    root = tmp_path_factory.mktemp("cli")
    rows = manifest_rows(5)
    photos = root / "photos"
    (photos / "sub").mkdir(parents=True)
    names = []
    for i, row in enumerate(rows[:4]):
        names.append(Path("sub" if i % 2 else "") / row["filename"])
        shutil.copy(DATA / "images" / row["filename"], photos / names[-1])
    names.append(Path("sub/IMG_0001.HEIC"))
    write_heic(photos / names[-1], rows[4])
    (photos / "notes.txt").write_text("not a photo")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GEOLOC_HOME", str(root / "home"))
        patch.setenv("GEOLOC_BATCH_SIZE", "2")
        yield SimpleNamespace(root=root, photos=photos, rows=rows, names=[str(n) for n in names])


def run(capsys, *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def leaf_parsers(parser, path=()):
    """(command words, parser) of every command that runs something."""
    subs = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    if not subs:
        yield path, parser
    for action in subs:
        for name, child in action.choices.items():
            yield from leaf_parsers(child, (*path, name))


def test_version(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out.strip() == "geoloc 0.1.0"


def test_every_command_that_prints_results_takes_json():
    lacking = [" ".join(path) for path, parser in leaf_parsers(build_parser())
               if path[0] not in RESULTLESS and "--json" not in parser._option_string_actions]
    assert lacking == []


@pytest.mark.parametrize("argv, dest, default", [
    (["locate", "x.jpg", "--collections"], "collections", None),
    (["models", "reembed", "--collections"], "collections", None),
    (["keys", "create", "--reader", "--collections"], "collections", None),
    (["train", "f.npz", "--out", "b", "--heads"], "heads", ["ce", "hc", "mvmf"]),
])
def test_list_options_take_commas_spaces_or_both(argv, dest, default):
    parser = build_parser()
    assert getattr(parser.parse_args(argv[:-1]), dest) == default
    for values in (["a,b,c"], ["a", "b", "c"], ["a,b", "c"], ["a, b,", "c"]):
        assert getattr(parser.parse_args([*argv, *values]), dest) == ["a", "b", "c"], values
    assert getattr(parser.parse_args([*argv, "a", argv[-1], "b,c"]), dest) == ["a", "b", "c"]  # repeated
    with pytest.raises(SystemExit):
        parser.parse_args([*argv, ","])


def test_index_reads_heic_and_answers_in_json(home, capsys):
    status, out, _ = run(capsys, "index", str(home.photos), "--collection", "dev", "--json")
    assert status == 0
    report = json.loads(out)
    assert (report["indexed"], report["in_collection"]) == (5, 5)
    assert report["skipped"] == {"unsupported_type": 1}
    assert Path(report["report"]).is_file()

    heic = home.photos / "sub/IMG_0001.HEIC"
    status, out, _ = run(capsys, "locate", str(heic), "-k", "1", "--json")
    assert status == 0
    top = json.loads(out)["answers"][0]["neighbours"][0]
    assert top["source"] == "sub/IMG_0001.HEIC" and top["similarity"] > 0.99  # found itself, by EXIF GPS
    assert (top["lat"], top["lon"]) == pytest.approx((float(home.rows[4]["lat"]), float(home.rows[4]["lon"])),
                                                     abs=1e-5)


def test_reindexing_skips_what_the_collection_holds(home, capsys):
    status, out, _ = run(capsys, "index", str(home.photos), "--collection", "dev")
    assert status == 0
    assert "indexed 0 photos into 'dev' (5 in the collection)" in out
    assert "skipped 5: already_indexed" in out


def test_only_photos_the_collection_lacks_reach_the_backbone(tmp_path, embedder):
    class CountingEmbedder(Embedder):
        """The real embedder, counting the photos it is asked to embed."""

        embedded = 0

        def features(self, images):
            self.embedded += len(images)
            return super().features(images)

    rows = manifest_rows(4)
    manifest = tmp_path / "photos.csv"

    def index(rows: list[dict]):
        with manifest.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows({**r, "filename": str(DATA / "images" / r["filename"])} for r in rows)
        counting = CountingEmbedder(embedder.backbone)
        return index_records(iter_source(manifest), "dev", gallery, counting, batch_size=2), counting.embedded

    with EdgeGallery(tmp_path / "gallery", embedder.dim) as gallery:
        report, embedded = index(rows[:3])
        assert (report.indexed, embedded, dict(report.skipped)) == (3, 3, {})
        report, embedded = index(rows[:3])
        assert (report.indexed, embedded, dict(report.skipped)) == (0, 0, {"already_indexed": 3})

        moved = {**rows[0], "lat": "10.5", "lon": "20.25"}  # a corrected manifest: new place, same photo
        before = {h.id: h for h in gallery.scroll(with_vectors=True)}
        report, embedded = index([moved, *rows[1:4]])
        assert (report.indexed, embedded, dict(report.skipped)) == (2, 1, {"already_indexed": 2})
        sha = hashlib.sha256((DATA / "images" / rows[0]["filename"]).read_bytes()).hexdigest()
        [hit] = gallery.retrieve([point_id("dev", sha)])
        assert (hit.lat, hit.lon) == (10.5, 20.25)
        assert (hit.vector == before[hit.id].vector).all()  # kept, not embedded again
        assert gallery.count() == 4


def test_an_import_job_counts_what_the_collection_holds(tmp_path, embedder, monkeypatch):
    """API imports index through the same code: a second import of the same photos finds them held (done, as
    a batch redelivered after a killed worker must find its own earlier writes) without embedding them."""
    from geoloc import jobs
    from geoloc.runtime import Runtime
    from geoloc.settings import Settings

    items = [{"path": str(DATA / "images" / r["filename"]), "source": r["filename"]} for r in manifest_rows(3)]
    with Runtime(Settings(home=tmp_path / "home", qdrant_url=None, bundle=None), embedder) as runtime:
        ctx = runtime.job_context()
        calls = []
        embed = embedder.features
        monkeypatch.setattr(embedder, "features", lambda images: calls.append(len(images)) or embed(images))
        for embedded in (3, 0):
            calls.clear()
            job_id = ctx.jobs.create("import", "dev", 3, 1, "k1")
            jobs.index_batch(ctx, job_id, 1, "dev", items)
            job = ctx.jobs.get(job_id)
            assert (job["state"], job["done"], job["skipped"], job["reasons"]) == ("succeeded", 3, 0, {})
            assert sum(calls) == embedded


def test_locate_a_folder_in_every_format(home, capsys):
    photos = {str(home.photos / name) for name in home.names}  # recursive; notes.txt is not a photo
    answers = {}
    for fmt in ("json", "jsonl", "csv", "geojson"):
        status, out, _ = run(capsys, "locate", str(home.photos), "-k", "3", "--format", fmt)
        assert status == 0, fmt
        answers[fmt] = out

    document = json.loads(answers["json"])
    assert {a["image"] for a in document["answers"]} == photos and document["accuracy"] is None
    lines = [json.loads(line) for line in answers["jsonl"].splitlines()]
    assert lines == document["answers"]

    rows = list(csv.DictReader(io.StringIO(answers["csv"])))
    assert tuple(rows[0]) == COLUMNS and {r["image"] for r in rows} == photos
    by_image = {a["image"]: a for a in document["answers"]}
    for row in rows:
        answer = by_image[row["image"]]
        assert float(row["lat"]) == pytest.approx(answer["lat"]) and row["place"] == answer["place"]["label"]
        assert float(row["p_25km"]) == pytest.approx(answer["probabilities"]["25"])
        assert row["neighbours"].split() == [n["id"] for n in answer["neighbours"]]

    collection = json.loads(answers["geojson"])
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == len(photos)
    for feature in collection["features"]:
        properties = feature["properties"]
        answer = by_image[properties["image"]]
        assert feature["type"] == "Feature" and feature["geometry"] == {
            "type": "Point", "coordinates": [answer["lon"], answer["lat"]]}
        assert properties["place"] == answer["place"]["label"]
        assert properties["uncertainty_km"] == answer["uncertainty_km"]
        assert (properties["confidence"], properties["abstained"]) == (answer["confidence"], answer["abstained"])
        assert [properties[f"p_{r}km"] for r in ("1", "25", "200", "750", "2500")] == list(
            answer["probabilities"].values())
        own = point_id("dev", hashlib.sha256(Path(properties["image"]).read_bytes()).hexdigest())
        assert properties["neighbours"][0] == own  # every photo here is in the gallery: itself comes first
        assert answer["same_photo"]["id"] == own and properties["same_photo"] == f"dev/{answer['same_photo']['source']}"

    status, out, _ = run(capsys, "locate", str(home.photos), "-k", "3", "--json")
    assert status == 0 and json.loads(out) == document  # --json is --format json


def test_locate_table_for_people(home, capsys):
    photo = str(home.photos / home.names[0])
    status, out, _ = run(capsys, "locate", photo, "-k", "3")
    assert status == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"{photo}: near ") and "chance within 1 km 100%" in lines[2]
    assert lines[1] == f"  the gallery holds this very photo: [dev] {home.names[0]}; its recorded location is the answer"
    assert lines[3].startswith("  retrieval-cluster, cluster of ") and len(lines) == 4 + 3
    assert "[dev] " + home.names[0] in lines[4]


def test_locate_an_empty_folder_is_a_user_error(home, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    status, _, err = run(capsys, "locate", str(tmp_path / "empty"))
    assert status == 2 and err.startswith("geoloc: error:") and "no photos in this folder" in err


def test_prune_dry_run_shows_what_would_go_and_changes_nothing(home, capsys):
    lat, lon = float(home.rows[0]["lat"]), float(home.rows[0]["lon"])
    box = [str(v) for v in (lat - 0.5, lon - 0.5, lat + 0.5, lon + 0.5)]
    inside = [r for r in home.rows if abs(float(r["lat"]) - lat) <= 0.5 and abs(float(r["lon"]) - lon) <= 0.5]

    status, out, _ = run(capsys, "prune", "--collection", "dev", "--box", *box, "--dry-run", "--json")
    assert status == 0
    preview = json.loads(out)
    assert preview["dry_run"] and (preview["would_remove"], preview["removed"]) == (len(inside), 0)
    assert len(inside) > 0
    assert {e["source"] for e in preview["examples"]} == {home.names[0]}
    status, out, _ = run(capsys, "prune", "--collection", "dev", "--box", *box, "--dry-run")
    assert f"would remove {len(inside)} of {len(inside)} photos checked in 'dev'" in out
    assert f"  {home.names[0]}  " in out and "dry run: nothing was removed" in out
    assert json.loads(run(capsys, "collections", "--json")[1]) == {"collections": [{"name": "dev", "photos": 5}]}

    status, out, _ = run(capsys, "prune", "--collection", "dev", "--box", *box, "--json")
    assert status == 0 and json.loads(out)["removed"] == len(inside)
    assert json.loads(run(capsys, "collections", "--json")[1])["collections"][0]["photos"] == 5 - len(inside)


def test_a_dry_run_gallery_counts_the_deletes_a_job_asks_for_and_makes_none(tmp_path):
    """What `prune --unplaceable --dry-run` relies on: deleting by ids counts those in the collection."""
    from geoloc.cli.dry_run import EXAMPLES, RecordingGallery
    from geoloc.gallery.base import SearchFilter
    from tests.gallery_helpers import DIM, make_points

    points = make_points(60)
    with EdgeGallery(tmp_path / "gallery", DIM) as gallery:
        gallery.upsert(points)
        recording = RecordingGallery(gallery)
        news = [p.id for p in points if p.payload["collection"] == "news"]
        asked = [p.id for p in points[:20]] + ["00000000-0000-5000-8000-000000000000"]  # one that does not exist
        assert recording.delete(SearchFilter(collections=["news"]), ids=asked) == len(set(asked) & set(news))
        assert recording.delete_collection("news") == len(news)
        assert recording.would_delete == len(set(asked) & set(news)) + len(news)
        assert len(recording.examples) == EXAMPLES and all(h.payload["collection"] == "news" for h in recording.examples)
        assert gallery.count() == 60


def geoloc_at(home, *args: str, answer: str | None) -> subprocess.CompletedProcess:
    """`geoloc ARGS` with `answer` typed at a terminal on its stdin, or (None) with no terminal at all."""
    command = [sys.executable, "-m", "geoloc.cli", *args]
    env = dict(os.environ)
    if answer is None:
        return subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env,
                              timeout=300)
    terminal, stdin = pty.openpty()
    try:
        process = subprocess.Popen(command, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, env=env)
        os.write(terminal, f"{answer}\n".encode())
        out, err = process.communicate(timeout=300)
    finally:
        os.close(stdin)
        os.close(terminal)
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def test_drop_asks_first_and_refuses_without_a_terminal(home, capsys):
    photos = json.loads(run(capsys, "collections", "--json")[1])["collections"][0]["photos"]
    refused = geoloc_at(home, "drop", "dev", answer=None)
    assert refused.returncode == 2 and refused.stderr.startswith("geoloc: error:")
    assert f"'dev' and its {photos} photos" in refused.stderr and "--yes" in refused.stderr

    kept = geoloc_at(home, "drop", "dev", answer="n")
    assert kept.returncode == 1 and f"its {photos} photos" in kept.stderr and "nothing dropped" in kept.stderr
    assert json.loads(run(capsys, "collections", "--json")[1])["collections"][0]["photos"] == photos

    dropped = geoloc_at(home, "drop", "dev", answer="y")
    assert dropped.returncode == 0 and f"dropped 'dev': {photos} photos removed" in dropped.stdout
    assert json.loads(run(capsys, "collections", "--json")[1]) == {"collections": []}
