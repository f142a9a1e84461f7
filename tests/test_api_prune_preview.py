"""A prune's dry run over the API: it names what the prune would remove, removes nothing and starts no job,
and the prune itself then removes exactly that many."""

from __future__ import annotations

from tests.api_helpers import expect_error, follow, upload, where


def _inside(rows, box):
    return [r for r in rows if box["south"] <= float(r["lat"]) <= box["north"]
            and box["west"] <= float(r["lon"]) <= box["east"]]


def test_a_dry_run_previews_the_region_and_removes_nothing(api, photos):
    client, admin = api["client"], api["admin"]
    rows = (photos["news"] + photos["spare"])[:8]  # one upload's worth
    assert client.post("/v1/collections", json={"name": "preview"}, headers=admin).status_code == 201
    assert follow(api, upload(api, "preview", rows).json()["job"]["id"])["done"] == len(rows)
    gallery = api["services"].gallery()
    assert gallery.count(where("preview")) == len(rows)
    lat, lon = float(rows[0]["lat"]), float(rows[0]["lon"])
    box = {"south": lat - 20, "west": lon - 30, "north": lat + 20, "east": lon + 30}
    inside = _inside(rows, box)
    jobs_before = client.get("/v1/jobs", headers=admin).json()["total"]

    response = client.post("/v1/collections/preview/prune", json={"box": box, "dry_run": True}, headers=admin)
    assert response.status_code == 200, response.text
    preview = response.json()
    assert preview["would_remove"] == len(inside) > 0
    assert sorted(p["source"] for p in preview["sample"]) == sorted(r["filename"] for r in inside)
    for photo in preview["sample"]:
        assert set(photo) == {"id", "source", "lat", "lon", "photo_url"}
        assert client.get(photo["photo_url"], headers=admin).status_code == 200
    assert gallery.count(where("preview")) == len(rows), "a dry run removes nothing"
    assert client.get("/v1/jobs", headers=admin).json()["total"] == jobs_before, "and starts no job"

    everything = {"south": -89, "west": -179.9, "north": 89, "east": 179.9}
    whole = client.post("/v1/collections/preview/prune", json={"box": everything, "dry_run": True}, headers=admin)
    assert whole.json()["would_remove"] == len(rows) and len(whole.json()["sample"]) == len(rows)

    job = follow(api, client.post("/v1/collections/preview/prune", json={"box": box}, headers=admin).json()["job"]["id"])
    assert (job["state"], job["removed"]) == ("succeeded", preview["would_remove"])
    assert client.delete("/v1/collections/preview", headers=admin).status_code == 200


def test_a_dry_run_is_for_admins_and_regions_only(api):
    client, admin, reader = api["client"], api["admin"], api["reader"]
    radius = {"radius": {"lat": 0, "lon": 0, "km": 100}, "dry_run": True}
    expect_error(client.post("/v1/collections/news/prune", json=radius, headers=reader), 403)
    expect_error(client.post("/v1/collections/nowhere/prune", json=radius, headers=admin), 404)
    expect_error(client.post("/v1/collections/news/prune", json={"dry_run": True}, headers=admin), 422)
    error = expect_error(client.post("/v1/collections/news/prune", json={"unplaceable": True, "dry_run": True},
                                     headers=admin), 422)
    assert "box or a radius" in error["message"]
    assert client.post("/v1/collections/news/prune", json=radius, headers=admin).json() == {"would_remove": 0,
                                                                                             "sample": []}
