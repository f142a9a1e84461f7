"""Locate photos: one pipeline for every entry point (CLI, API, workers, evaluation).

Without a model bundle: retrieval over the whole gallery, then aggregation.
With one: Search-within-Cell (paper 3.4): the classifier's cell, the gallery's top K inside it as one
filtered query, then aggregation; an empty cell answers the cell centre.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from geoloc.gallery.base import Gallery, Hit, SearchFilter
from geoloc.aggregation import AGGREGATORS
from geoloc.embedding import Embedder
from geoloc.geodesy import haversine_km

CONFIDENCE_RADIUS_KM = 25.0
CANDIDATE_CELLS = 5


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


@dataclass
class Answer:
    lat: float
    lon: float
    method: str
    cluster_size: int
    neighbours: list[Neighbour]
    cell: dict | None = None
    candidates: list[dict] = field(default_factory=list)
    confidence: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class Locator:
    def __init__(self, embedder: Embedder, gallery: Gallery, k: int = 10, aggregator: str = "cluster",
                 collections: list[str] | None = None, top_cells: int = 1, head: str | None = None,
                 within_cell: bool = True, **aggregator_options):
        """`head` picks the bundle's classifier (default: the bundle's own); `within_cell=False` searches
        the whole gallery with the bundle's RRM embedding (retrieval without the classifier)."""
        if aggregator not in AGGREGATORS:
            raise LocateError(f"unknown aggregator '{aggregator}'; choose one of {', '.join(AGGREGATORS.names())}")
        if k < 1 or top_cells < 1:
            raise LocateError("k and top_cells must be at least 1")
        self.embedder, self.gallery = embedder, gallery
        self.k, self.aggregator, self.top_cells = k, aggregator, top_cells
        self.head = head
        self.within_cell = within_cell and embedder.bundle is not None
        self.collections = list(collections) if collections else None
        self.aggregator_options = aggregator_options

    @property
    def method(self) -> str:
        return f"swc-{self.aggregator}" if self.within_cell else f"retrieval-{self.aggregator}"

    def check_ready(self) -> None:
        self.gallery.check_model(self.embedder.model_id)
        if self.gallery.count(SearchFilter(collections=self.collections)) == 0:
            scope = f"collections {', '.join(self.collections)}" if self.collections else "the gallery"
            raise LocateError(f"{scope} holds no photos yet: index some first (geoloc index PATH)")

    def locate(self, images) -> list[Answer]:
        return self.locate_features(self.embedder.features(images))

    def locate_features(self, features: np.ndarray) -> list[Answer]:
        vectors = self.embedder.vectors(features)
        if not self.within_cell:
            where = SearchFilter(collections=self.collections)
            return [self._answer(self.gallery.search(v, self.k, where)) for v in vectors]
        log_probs = self.embedder.bundle.cell_log_probs(features, head=self.head)
        return [self._search_within_cells(v, np.exp(lp)) for v, lp in zip(vectors, log_probs)]

    def _answer(self, hits: list[Hit], cell_weights: np.ndarray | None = None) -> Answer:
        lat = np.array([h.lat for h in hits])
        lon = np.array([h.lon for h in hits])
        scores = np.array([h.score for h in hits]) if cell_weights is None else cell_weights
        estimate = AGGREGATORS.get(self.aggregator)(lat, lon, scores, **self.aggregator_options)
        km = haversine_km(lat, lon, estimate.lat, estimate.lon)
        neighbours = [Neighbour(h.id, h.lat, h.lon, float(h.score), float(d), h.payload.get("collection", ""),
                                h.payload.get("source", "")) for h, d in zip(hits, km)]
        return Answer(estimate.lat, estimate.lon, self.method, len(estimate.support), neighbours)

    def _search_within_cells(self, vector: np.ndarray, probs: np.ndarray) -> Answer:
        fine = self.embedder.bundle.hierarchy.fine
        order = np.argsort(-probs)
        chosen = order[: self.top_cells]
        where = SearchFilter(collections=self.collections,
                             cell_ranges=[fine.leaf_range(int(c)) for c in chosen])
        hits = self.gallery.search(vector, self.k * len(chosen), where)
        top = int(order[0])
        if not hits:
            lat, lon = fine.centres[top]
            answer = Answer(float(lat), float(lon), self.method, 0, [])
        elif len(chosen) == 1:
            answer = self._answer(hits[: self.k])
        else:
            # weight each neighbour's similarity by its cell's probability relative to the best cell
            cells = fine.assign_leaves([h.payload["s2"] for h in hits])  # the stored leaf, not recomputed
            weights = np.array([h.score for h in hits]) * probs[cells] / probs[top]
            keep = np.argsort(-weights)[: self.k]
            answer = self._answer([hits[i] for i in keep], weights[keep])
        answer.cell = self._cell(fine, top, probs)
        answer.candidates = [self._cell(fine, int(c), probs) for c in order[:CANDIDATE_CELLS]]
        centres = np.asarray(fine.centres)
        near = haversine_km(centres[:, 0], centres[:, 1], answer.lat, answer.lon) <= CONFIDENCE_RADIUS_KM
        answer.confidence = float(probs[near].sum())
        return answer

    @staticmethod
    def _cell(partition, index: int, probs: np.ndarray) -> dict:
        lat, lon = partition.centres[index]
        return {"token": partition.tokens[index], "lat": float(lat), "lon": float(lon),
                "probability": float(probs[index])}
