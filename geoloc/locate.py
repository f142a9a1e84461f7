"""Locate photos: one pipeline for every entry point (CLI, API, workers, evaluation).

Without a model bundle: retrieval over the whole gallery, then aggregation.
With one: Search-within-Cell (paper 3.4): the classifier's cell, the gallery's top K inside it as one
filtered query, then aggregation; an empty cell answers the cell centre. With `prior="zero-shot"` the cells and
their probabilities come from the encoder's text tower instead of a trained classifier (geoloc.zero_shot).
Every answer carries calibrated probabilities of lying within 1, 25, 200, 750 and 2,500 km of the truth
(geoloc.calibration), from the calibrator fitted for this model when there is one, else the default.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from geoloc.gallery.base import Gallery, Hit, SearchFilter
from geoloc.aggregation import AGGREGATORS, POOL_SIZE, Pool
from geoloc.calibration import RADII_KM, CalibrationError, Calibrator, answer_signals, cell_signals, \
    find_calibrator, uncertainty_km
from geoloc.embedding import Embedder
from geoloc.geodesy import haversine_km
from geoloc.ingest.records import PHOTOGRAPHER, point_id
from geoloc.models.partition import Partition
from geoloc.settings import Settings
from geoloc.zero_shot import PRIORS, PriorError, ZeroShotPrior

CANDIDATE_CELLS = 5
SAME_PHOTO = "same photo"  # an answer's `calibration` when the gallery holds the very photo asked about
WARM_UP_SIDE = 384  # a photo of the size served, for the first forward pass


class LocateError(ValueError):
    """A locate request that cannot be answered as asked (empty gallery, unknown aggregator)."""


@dataclass
class Neighbour:
    id: str
    lat: float
    lon: float
    similarity: float
    km: float
    collection: str
    source: str
    place: dict | None = None  # the nearest populated place (geoloc.places)


@dataclass
class Answer:
    lat: float
    lon: float
    method: str
    cluster_size: int
    neighbours: list[Neighbour]
    place: dict | None = None  # the nearest populated place, its region and country (geoloc.places)
    cell: dict | None = None
    candidates: list[dict] = field(default_factory=list)
    confidence: float | None = None  # probability of lying within the locator's `within_km` of the truth
    probabilities: dict[str, float] = field(default_factory=dict)  # {"1": p, "25": p, ... "2500": p}
    uncertainty_km: float | None = None  # smallest radius with probability >= 0.5
    calibration: str | None = None  # "default", or the id of the calibrator fitted for this model
    abstained: bool = False  # confidence under the locator's min_confidence: a best guess, marked as such
    signals: dict[str, float] = field(default_factory=dict)  # what the probabilities were computed from
    same_photo: dict | None = None  # the gallery's copy of this very photo (same bytes): id, collection, source
    support: list[int] = field(default_factory=list)  # indices of the neighbours the answer rests on

    def to_dict(self) -> dict:
        """As dataclasses.asdict makes it, without its deep copies (a third of a warm locate's own time)."""
        answer = {f.name: getattr(self, f.name) for f in fields(self)}
        answer["neighbours"] = [{**vars(n), "place": _copy(n.place)} for n in self.neighbours]
        answer["candidates"] = [_copy(c) for c in self.candidates]
        for name in ("place", "cell", "probabilities", "signals", "same_photo"):
            answer[name] = _copy(answer[name])
        return answer


def _copy(value: dict | None) -> dict | None:
    """A copy of an answer's dict two levels deep (a cell holds its place): enough for callers to add keys."""
    return None if value is None else {k: dict(v) if isinstance(v, dict) else v for k, v in value.items()}


class Locator:
    def __init__(self, embedder: Embedder, gallery: Gallery, k: int = 10, aggregator: str = "cluster",
                 collections: list[str] | None = None, top_cells: int = 1, head: str | None = None,
                 within_cell: bool = True, calibrator: Calibrator | None = None,
                 min_confidence: float | None = None, within_km: float = 25, prior: str | None = None,
                 home: Path | None = None, **aggregator_options):
        """`head` picks the bundle's classifier (default: the bundle's own); `within_cell=False` searches
        the whole gallery with the bundle's RRM embedding (retrieval without the classifier).
        `calibrator` None: the one fitted for this model (the bundle's, else `home`/calibration/, home being
        $GEOLOC_HOME unless the caller's settings already name it), else the default. An answer's confidence
        is its probability of lying within `within_km`; under
        `min_confidence` it is marked abstained. `prior="zero-shot"`: Search-within-Cell over cells of the gallery's
        own photos, their probabilities from the encoder's text tower, in place of a bundle's classifier."""
        if aggregator not in AGGREGATORS:
            raise LocateError(f"unknown aggregator '{aggregator}'; choose one of {', '.join(AGGREGATORS.names())}")
        if k < 1 or top_cells < 1:
            raise LocateError("k and top_cells must be at least 1")
        if within_km not in RADII_KM:
            raise LocateError(f"within_km must be one of {', '.join(f'{r:g}' for r in RADII_KM)} km")
        if min_confidence is not None and not 0 <= min_confidence <= 1:
            raise LocateError("min_confidence must lie between 0 and 1")
        self.calibrator = calibrator if calibrator is not None else self._find_calibrator(embedder, home)
        self.within_km, self.min_confidence = within_km, min_confidence
        self.embedder, self.gallery = embedder, gallery
        self.k, self.aggregator, self.top_cells = k, aggregator, top_cells
        self.head = head
        self.collections = list(collections) if collections else None
        self.prior = self._make_prior(prior, embedder, gallery) if prior is not None else None
        self.within_cell = (within_cell and embedder.bundle is not None) or self.prior is not None
        self.aggregator_options = aggregator_options
        self._aggregate = AGGREGATORS.get(aggregator)
        self._aggregate_with_pool = "pool" in inspect.signature(self._aggregate).parameters

    def _make_prior(self, name: str, embedder: Embedder, gallery: Gallery) -> ZeroShotPrior:
        if name not in PRIORS:
            raise LocateError(f"unknown prior '{name}'; choose one of {', '.join(PRIORS)}")
        try:
            return ZeroShotPrior(embedder.backbone, gallery, self.collections)
        except PriorError as err:
            raise LocateError(str(err)) from None

    @staticmethod
    def _find_calibrator(embedder: Embedder, home: Path | None) -> Calibrator:
        bundle = embedder.bundle
        try:
            return find_calibrator(embedder.model_id, embedder.bundle_id, bundle.path if bundle else None,
                                   home if home is not None else Settings().home)
        except CalibrationError as err:
            raise LocateError(f"{err}: fit it again (geoloc calibrate) or delete it") from None

    @property
    def method(self) -> str:
        return f"swc-{self.aggregator}" if self.within_cell else f"retrieval-{self.aggregator}"

    def check_ready(self) -> None:
        self.gallery.check_model(self.embedder.model_id)
        if self.gallery.count(SearchFilter(collections=self.collections)) == 0:
            scope = f"collections {', '.join(self.collections)}" if self.collections else "the gallery"
            raise LocateError(f"{scope} holds no photos yet: index some first (geoloc index PATH)")

    def locate(self, images, digests: list[str | None] | None = None) -> list[Answer]:
        return self.locate_features(self.embedder.features(images), digests)

    def locate_features(self, features: np.ndarray, digests: list[str | None] | None = None) -> list[Answer]:
        """`digests`: the SHA-256 of each photo's bytes, when known: a photo the gallery holds is recognised."""
        vectors = self.embedder.vectors(features)
        if not self.within_cell:
            where = SearchFilter(collections=self.collections)
            answers = [self._answer(hits[: self.k], None, hits) for hits in (self._retrieve(v, where) for v in vectors)]
        else:
            partition, probs = self._cell_probabilities(features)
            answers = [self._search_within_cells(v, p, partition) for v, p in zip(vectors, probs)]
        for answer, digest in zip(answers, digests or ()):
            copy = digest and (_among(answer.neighbours, digest) or self._stored_copy(digest))
            if copy:
                _answer_with(answer, copy)
        return _name_places(self._calibrate(answers))

    def _stored_copy(self, digest: str) -> Neighbour | None:
        """The gallery's copy of these bytes in the collections searched, looked up by its point id: with
        Search-within-Cell it may lie outside the cells searched (retrieval always finds it first)."""
        if not self.within_cell:
            return None
        names = self.collections if self.collections is not None else list(self.gallery.collections())
        found = self.gallery.retrieve([point_id(name, digest) for name in names])
        return next((_neighbour(h, 1.0, 0.0) for h in found), None)

    def _retrieve(self, vector: np.ndarray, where: SearchFilter) -> list[Hit]:
        """The pool of nearest photos: the first K make the answer, all of them weigh its place."""
        hits = self.gallery.search(vector, max(self.k, POOL_SIZE), where)
        if not hits:  # an empty scope, met by a caller that checks readiness less often than it locates
            self.check_ready()
        return hits

    def _cell_probabilities(self, features: np.ndarray) -> tuple[Partition, np.ndarray]:
        """The cells searched and (n, cells) probabilities: the zero-shot prior's, else the bundle's classifier's."""
        if self.prior is None:
            bundle = self.embedder.bundle
            return bundle.hierarchy.fine, np.exp(bundle.cell_log_probs(features, head=self.head))
        try:
            return self.prior.probabilities(features)
        except PriorError as err:
            raise LocateError(str(err)) from None

    def _calibrate(self, answers: list[Answer]) -> list[Answer]:
        probabilities = self.calibrator.predict_answers([a.signals for a in answers])
        for answer, row in zip(answers, probabilities):
            if answer.same_photo is not None:  # its location is the archive's own record
                row = np.ones(len(RADII_KM))
            answer.probabilities = {f"{r:g}": float(p) for r, p in zip(RADII_KM, row)}
            answer.uncertainty_km = uncertainty_km(row)
            answer.calibration = SAME_PHOTO if answer.same_photo is not None else self.calibrator.id
            answer.confidence = answer.probabilities[f"{self.within_km:g}"]
            answer.abstained = self.min_confidence is not None and answer.confidence < self.min_confidence
        return answers

    def _answer(self, hits: list[Hit], cell_weights: np.ndarray | None, wide: list[Hit]) -> Answer:
        """An answer from the K `hits` (weighted by their cells with Search-within-Cell), its place weighed in
        the `wide` pool of nearest photos."""
        lat = np.array([h.lat for h in hits])
        lon = np.array([h.lon for h in hits])
        scores = np.array([h.score for h in hits]) if cell_weights is None else cell_weights
        wide = wide[:POOL_SIZE]  # the same pool whatever K and the cells searched, as the calibrator was fitted
        pool = Pool(np.array([h.lat for h in wide]), np.array([h.lon for h in wide]),
                    np.array([_photographer(h) for h in wide]))
        options = {"pool": pool} if self._aggregate_with_pool else {}
        estimate = self._aggregate(lat, lon, scores, **options, **self.aggregator_options)
        km = haversine_km(lat, lon, estimate.lat, estimate.lon)
        neighbours = [_neighbour(h, float(h.score), float(d)) for h, d in zip(hits, km)]
        witnesses = int(pool.witnesses(estimate.lat, estimate.lon)[0])
        return Answer(estimate.lat, estimate.lon, self.method, len(estimate.support), neighbours,
                      signals=answer_signals([h.score for h in hits], km, estimate.support, witnesses),
                      support=list(estimate.support))

    def _search_within_cells(self, vector: np.ndarray, probs: np.ndarray, fine: Partition) -> Answer:
        order = np.argsort(-probs)
        chosen = order[: self.top_cells]
        where = SearchFilter(collections=self.collections,
                             cell_ranges=[fine.leaf_range(int(c)) for c in chosen])
        hits = self.gallery.search(vector, max(self.k * len(chosen), POOL_SIZE), where)
        top = int(order[0])
        if not hits:
            lat, lon = fine.centres[top]
            answer = Answer(float(lat), float(lon), self.method, 0, [], signals=answer_signals([], [], []))
        elif len(chosen) == 1:
            answer = self._answer(hits[: self.k], None, hits)
        else:
            # weight each neighbour's similarity by its cell's probability relative to the best cell
            weighed = hits[: self.k * len(chosen)]
            cells = fine.assign_leaves([h.payload["s2"] for h in weighed])  # the stored leaf, not recomputed
            weights = np.array([h.score for h in weighed]) * probs[cells] / probs[top]
            keep = np.argsort(-weights)[: self.k]
            answer = self._answer([weighed[i] for i in keep], weights[keep], hits)
        answer.cell = self._cell(fine, top, probs)
        answer.candidates = [self._cell(fine, int(c), probs) for c in order[:CANDIDATE_CELLS]]
        answer.signals.update(cell_signals(probs))
        return answer

    @staticmethod
    def _cell(partition, index: int, probs: np.ndarray) -> dict:
        lat, lon = partition.centres[index]
        return {"token": partition.tokens[index], "lat": float(lat), "lon": float(lon),
                "probability": float(probs[index])}


def warm_up(embedder: Embedder, home: Path | None, features: Callable | None = None) -> None:
    """Run once what a process's first locate runs only once: the encoder's first forward pass (torch's
    allocations and kernel choices), the classifier's, the calibrator's load and first prediction, the
    aggregation's imports and the place names' load. `features(embedder, images)` runs the forward pass
    (default: on this thread); a server passes the thread its requests will use, since a forward pass run
    from a second thread of the process afterwards is much slower (two OpenMP thread teams)."""
    from PIL import Image

    from geoloc.places import nearest_places

    size = (WARM_UP_SIDE, WARM_UP_SIDE * 3 // 4)
    # a textured photo: the encoder's trace is checked on it (models/tracing.py), and a flat one checks little
    photo = [Image.merge("RGB", [Image.effect_noise(size, 64), Image.linear_gradient("L").resize(size),
                                 Image.effect_noise(size, 32)])]
    run = features or (lambda model, images: model.features(images))
    run(embedder, photo)
    features = run(embedder, photo)  # the second pass traces the encoder, where it is traced
    embedder.vectors(features)
    if embedder.bundle is not None:
        embedder.bundle.cell_log_probs(features)
    for name in AGGREGATORS.names():
        AGGREGATORS.get(name)(np.zeros(2), np.array([0.0, 0.001]), np.array([1.0, 0.9]))
    Locator._find_calibrator(embedder, home).predict_answers([answer_signals([1.0], [0.0], [0])])
    nearest_places([0.0], [0.0])


def _neighbour(hit: Hit, similarity: float, km: float) -> Neighbour:
    return Neighbour(hit.id, hit.lat, hit.lon, similarity, km, hit.payload.get("collection", ""),
                     hit.payload.get("source", ""))


def _among(neighbours: list[Neighbour], digest: str) -> Neighbour | None:
    """The neighbour that is the very photo: its point id is that of these bytes in its collection."""
    return next((n for n in neighbours if n.id == point_id(n.collection, digest)), None)


def _answer_with(answer: Answer, same: Neighbour) -> None:
    """Answer with the recorded location of the gallery's copy of the photo: the archive's own record."""
    answer.lat, answer.lon = same.lat, same.lon
    for n in answer.neighbours:
        n.km = float(haversine_km(n.lat, n.lon, same.lat, same.lon))
    answer.cluster_size = sum(n.km <= 1 for n in answer.neighbours)
    answer.support = [i for i, n in enumerate(answer.neighbours) if n.id == same.id]
    answer.same_photo = {"id": same.id, "collection": same.collection, "source": same.source}


def _photographer(hit: Hit) -> str:
    """Who took a gallery photo; "" when unknown: photos nobody is credited for count as one photographer
    (as many unknown photographers would make a crowded place look like a landmark)."""
    return str((hit.payload.get("extra") or {}).get(PHOTOGRAPHER) or "")


def _name_places(answers: list[Answer]) -> list[Answer]:
    """The nearest populated place of every answer, neighbour and candidate cell, in one lookup."""
    from geoloc.places import nearest_places

    named = list(answers) + [n for a in answers for n in a.neighbours]
    cells = [c for a in answers for c in ([a.cell] if a.cell else []) + a.candidates]
    points = [(x.lat, x.lon) for x in named] + [(c["lat"], c["lon"]) for c in cells]
    if not points:
        return answers
    lat, lon = np.asarray(points, dtype=np.float64).T
    places = [place.to_dict() for place in nearest_places(lat, lon)]
    for holder, place in zip(named, places):
        holder.place = place
    for cell, place in zip(cells, places[len(named):]):
        cell["place"] = place
    return answers
