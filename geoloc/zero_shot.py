"""A zero-shot cell prior: Search-within-Cell without a trained classifier, for encoders with a text tower.

The cells are an adaptive S2 partition of the gallery's own photo coordinates (the searched collections only, so
no answer ever rests on photos outside them). Each cell is named by the nearest populated places of its centre and
of a few of its photos, written into prompts ("a photo taken in Chamonix-Mont-Blanc, Auvergne-Rhône-Alpes,
France."), text-embedded and averaged over the prompts. A photo's cell probabilities are
softmax(scale * image . cell texts), with the CLIP's own logit scale when it has one, as in CLIP's zero-shot
classification. Cells and their text embeddings are kept per gallery handle, model and scope while the photo count
stays the same; when it changes, only prompts never seen before are embedded again.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import numpy as np

from geoloc.embedding import l2_normalise
from geoloc.gallery.base import Gallery, SearchFilter
from geoloc.models.partition import Partition, adaptive_partition
from geoloc.places import Place, nearest_places

PRIORS = ("zero-shot",)
PHOTOS_PER_CELL = 10  # about K: a cell should hold the neighbours a search inside it aggregates
MAX_CELLS = 256
NAMED_PHOTOS = 3  # photos of a cell whose nearest places name it, beside its centre's
MAX_PLACES = 3  # distinct places per cell
TEMPLATES = ("a photo taken in {where}.", "a photo of {where}.", "a travel photo from {where}.")
DEFAULT_TEMPERATURE = 0.01  # for an encoder without a learned logit scale: CLIP's learned scale ends at 100
MAX_SCOPES = 16  # cached (model, collections) states per gallery handle


class PriorError(ValueError):
    """A prior that cannot be computed here: the encoder has no text tower, or the gallery holds no photos."""


@dataclass(frozen=True)
class CellTexts:
    """The cells of one gallery state, the places and prompts that name them, and their text embeddings."""

    count: int  # photos in the scope when the cells were made: the cache key
    partition: Partition
    places: list[list[str]]  # per cell: "Paris, Île-de-France, France", ...
    prompts: list[list[str]]
    embeddings: np.ndarray  # (cells, dim) L2-normalised mean of each cell's prompt embeddings
    vectors: dict[str, np.ndarray]  # prompt -> text embedding, reused when the gallery changes


_cache: weakref.WeakKeyDictionary[Gallery, dict[tuple, CellTexts]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def has_text_tower(encoder) -> bool:
    return callable(getattr(encoder, "encode_text", None))


def logit_scale(encoder, temperature: float | None = None) -> float:
    """1 / temperature when one is given, else the model's learned scale (capped at 100 as CLIP trains it)."""
    if temperature is not None:
        if temperature <= 0:
            raise PriorError("the prior's temperature must be positive")
        return 1.0 / temperature
    learned = getattr(getattr(encoder, "model", None), "logit_scale", None)
    return 1.0 / DEFAULT_TEMPERATURE if learned is None else min(float(learned.exp()), 100.0)


class ZeroShotPrior:
    """Cell probabilities from an encoder's text tower and the place names of the gallery's photos."""

    def __init__(self, encoder, gallery: Gallery, collections: list[str] | None = None,
                 temperature: float | None = None):
        if not has_text_tower(encoder):
            raise PriorError(f"the zero-shot prior needs an encoder with a text tower (a CLIP-family model: "
                             f"--backbone clip --checkpoint DIR); {encoder.model_id} has none")
        self.encoder, self.gallery = encoder, gallery
        self.collections = sorted(collections) if collections else None
        self.scale = logit_scale(encoder, temperature)

    def cells(self) -> CellTexts:
        """The cells of the gallery as it is now: made again only when its photo count has changed."""
        count = self.gallery.count(SearchFilter(collections=self.collections))
        if count == 0:
            raise PriorError("the zero-shot prior needs located photos in the gallery: index some first")
        key = (self.encoder.model_id, tuple(self.collections or ()))
        with _lock:
            held = _cache.setdefault(self.gallery, {})
            old = held.pop(key, None)
            held[key] = old if old is not None and old.count == count else self._make(count, old)
            while len(held) > MAX_SCOPES:
                held.pop(next(iter(held)))
            return held[key]

    def probabilities(self, features: np.ndarray) -> tuple[Partition, np.ndarray]:
        """The partition, and (n, cells) probabilities for n photos' image features."""
        from scipy.special import softmax  # here: importing it costs every locate command 0.3 s

        texts = self.cells()
        logits = self.scale * (l2_normalise(features) @ texts.embeddings.T)
        return texts.partition, softmax(logits.astype(np.float64), axis=1)

    def _make(self, count: int, old: CellTexts | None) -> CellTexts:
        lat, lon = self._locations()
        n_cells = int(np.clip(np.ceil(len(lat) / PHOTOS_PER_CELL), 1, MAX_CELLS))
        partition = adaptive_partition(lat, lon, n_cells=n_cells)
        places = name_cells(partition, lat, lon)
        prompts = [[t.format(where=where) for where in names for t in TEMPLATES] for names in places]
        wanted = {p for cell in prompts for p in cell}
        known = {p: v for p, v in (old.vectors if old is not None else {}).items() if p in wanted}
        new = sorted(wanted - known.keys())
        vectors = known | dict(zip(new, self.encoder.encode_text(new) if new else []))
        embeddings = l2_normalise(np.stack([np.mean([vectors[p] for p in cell], axis=0) for cell in prompts]))
        return CellTexts(count, partition, places, prompts, embeddings, vectors)

    def _locations(self) -> tuple[np.ndarray, np.ndarray]:
        points = [(h.lat, h.lon) for h in self.gallery.scroll(SearchFilter(collections=self.collections))]
        if not points:
            raise PriorError("the zero-shot prior needs located photos in the gallery: index some first")
        lat, lon = np.asarray(points, dtype=np.float64).T
        return lat, lon


def name_cells(partition: Partition, lat: np.ndarray, lon: np.ndarray) -> list[list[str]]:
    """Each cell's distinct places, its centre's first, then those of up to NAMED_PHOTOS of its photos spread
    through it (in S2 order), at most MAX_PLACES: one gazetteer lookup for every point."""
    cell_of = partition.assign(lat, lon)
    order = np.argsort(cell_of, kind="stable")
    starts = np.searchsorted(cell_of[order], np.arange(len(partition) + 1))
    picked = []
    for i in range(len(partition)):
        members = order[starts[i]:starts[i + 1]]
        picked.append(members[np.unique(np.linspace(0, len(members) - 1, NAMED_PHOTOS).astype(int))]
                      if len(members) else members)
    points = np.concatenate([partition.centres] + [np.column_stack([lat[m], lon[m]]) for m in picked])
    found = nearest_places(points[:, 0], points[:, 1])
    cursor, names = len(partition), []
    for i, members in enumerate(picked):
        own = [found[i]] + found[cursor:cursor + len(members)]
        cursor += len(members)
        names.append(list(dict.fromkeys(_where(p) for p in own))[:MAX_PLACES])
    return names


def _where(place: Place) -> str:
    """'Chamonix-Mont-Blanc, Auvergne-Rhône-Alpes, France': the parts that are known."""
    return ", ".join(part for part in (place.name, place.region, place.country or place.country_code) if part)
