"""Moving a serving gallery to another encoder: the API answers with EfficientNet-Lite0, an admin re-embeds
the collection with a tiny CLIP built here (another dimension) into its own store while Lite0 keeps
answering, and queries switch to the CLIP once its store holds every photo; then the CLI's `geoloc models`
sees both stores and drops the old one."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from geoloc.cli import main
from geoloc.gallery.stores import ModelStores
from geoloc.search_api.app import create_app
from geoloc.search_api.services import build_services
from geoloc.settings import Settings
from tests.api_helpers import follow, photo_file, upload
from tests.test_encoders import save_tiny_clip

pytest.importorskip("open_clip")


def test_reembed_into_a_new_model_while_serving_then_switch(tmp_path, photos, embedder, monkeypatch, capsys):
    imports = tmp_path / "imports"
    tiny = save_tiny_clip(imports / "tiny-clip", seed=0)
    settings = Settings(home=tmp_path / "home", broker_url=None, qdrant_url=None, bundle=None, require_keys=False,
                        import_roots=[imports.resolve()], job_batch=2)
    services = build_services(settings, embedder)
    try:
        with TestClient(create_app(services=services)) as client:
            state = {"client": client, "admin": {}}
            assert client.post("/v1/collections", json={"name": "news"}).status_code == 201
            assert follow(state, upload(state, "news", photos["news"]).json()["job"]["id"])["done"] == 6
            query = photo_file(photos["news"][0])
            old = client.post("/v1/locate", files=query).json()
            assert old["model"] == embedder.model_id

            accepted = client.post("/v1/collections/news/reembed",
                                   json={"encoder": {"backbone": "clip", "checkpoint": str(tiny)}})
            assert accepted.status_code == 202, accepted.text
            during = client.post("/v1/locate", files=query).json()  # one model per answer, whichever serves
            assert during["model"] in (embedder.model_id, services.embedder.model_id)
            job = follow(state, accepted.json()["job"]["id"])
            assert (job["state"], job["done"]) == ("succeeded", 6)

            new = client.post("/v1/locate", files=query).json()
            assert "model" in new, new
            assert new["model"].startswith("clip:sha256-") and new["model"] != old["model"]
            assert {n["id"] for n in new["neighbours"]} == {n["id"] for n in old["neighbours"]}  # same photos
            outside = client.post("/v1/collections/news/reembed",
                                  json={"encoder": {"backbone": "clip", "checkpoint": str(tmp_path)}})
            assert outside.status_code in (403, 422)  # weights only from under the import roots
    finally:
        services.close()

    stores = ModelStores(settings.gallery_dir)
    assert stores.serving() == new["model"] and stores.read()["stores"][new["model"]]["dim"] == 32
    monkeypatch.setenv("GEOLOC_HOME", str(settings.home))
    assert main(["models", "list", "--json"]) == 0
    listed = {row["model"]: row for row in json.loads(capsys.readouterr().out)}
    assert listed[old["model"]]["collections"] == listed[new["model"]]["collections"] == {"news": 6}
    assert listed[new["model"]]["serving"] and not listed[old["model"]]["serving"]
    assert main(["models", "drop", old["model"]]) == 0
    assert "6 photos removed" in capsys.readouterr().out
    assert old["model"] not in stores.read()["stores"]
