"""Which parts of a photo an answer rests on: occlusion sensitivity (Zeiler and Fergus, 2014) over a grid.

Each cell of a rows x cols grid is covered in turn by a flat patch of the encoder's mean colour (zero after
its normalisation: the network sees "nothing" there); the covered copies are embedded a batch at a time and
each cell's importance is how far covering it lowers what the answer was decided by:

* "cell": with a model bundle's classifier, the probability of the predicted cell;
* "retrieval": otherwise, the mean cosine similarity to the reference photos the answer rests on (the
  neighbours the aggregator built it from, e.g. DBSCAN's cluster).

Importances are the drops clipped at zero (covering a cell may also raise the score) and scaled so the
largest is 1; a photo where no covering lowers the score has all zeros. In the spirit of interpretable
geolocation (Theiner et al., 2022): a person can check whether the answer rests on the building, the sign or
the sky.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import chain, islice

import numpy as np
from PIL import Image, ImageDraw

from geoloc.locate import Answer, LocateError, Locator

DEFAULT_GRID = 7
GRID_RANGE = (3, 16)
# a larger photo is brought down first, to this shorter side (encoders see 224-336 px anyway) and this many
# pixels (a long panorama's copies stay small in memory)
WORKING_SIDE, WORKING_PIXELS = 512, 1 << 20
TARGETS = ("retrieval", "cell")
NOISE = 1e-5  # scores are float32 similarities or probabilities: differences under this are rounding

Scorer = Callable[[np.ndarray], np.ndarray]  # backbone features (n, d) -> the score explained, (n,)


@dataclass
class Explanation:
    importance: np.ndarray  # (rows, cols), in [0, 1]
    drops: np.ndarray  # (rows, cols): the score minus the score with that cell covered (may be negative)
    score: float  # the score of the photo uncovered
    target: str  # one of TARGETS
    answer: Answer

    def to_dict(self) -> dict:
        rows, cols = self.importance.shape
        return {"rows": rows, "cols": cols, "importance": np.round(self.importance, 4).tolist(),
                "target": self.target, "answer": {"lat": self.answer.lat, "lon": self.answer.lon}}


def explain(image: Image.Image, locator: Locator, grid: int = DEFAULT_GRID, digest: str | None = None) -> Explanation:
    """The answer `locator` gives for `image` (upright RGB; `digest`, the SHA-256 of its bytes, as locate takes
    it), and the importance of each cell of a grid x grid partition of the photo for it."""
    if not GRID_RANGE[0] <= grid <= GRID_RANGE[1]:
        raise ValueError(f"grid must lie between {GRID_RANGE[0]} and {GRID_RANGE[1]}")
    answer = locator.locate([image], [digest])[0]
    target, scorer = _scorer(locator, answer)
    work = _working_copy(image)
    fill = fill_colour(locator)
    copies = chain([work], (covered(work, box, fill) for box in cell_boxes(work.size, grid, grid)))
    scores = np.concatenate([scorer(locator.embedder.features(batch))  # one forward pass per batch
                             for batch in _batches(copies, locator.embedder.backbone.batch_size)])
    drops = (scores[0] - scores[1:]).reshape(grid, grid)
    return Explanation(normalised(drops), drops, float(scores[0]), target, answer)


def normalised(drops: np.ndarray) -> np.ndarray:
    """Drops clipped at zero and scaled so the largest is 1 (all zeros when nothing lowers the score). Drops
    within float rounding of zero count as zero: scaling must not blow rounding noise up to a heat map."""
    positive = np.where(drops > NOISE, drops, 0.0)
    top = float(positive.max(initial=0.0))
    return positive / top if top > 0 else np.zeros_like(positive)


def cell_boxes(size: tuple[int, int], rows: int, cols: int) -> list[tuple[int, int, int, int]]:
    """(left, top, right, bottom) of each cell of the grid, row by row; cells tile the image exactly."""
    width, height = size
    xs = np.linspace(0, width, cols + 1).round().astype(int)
    ys = np.linspace(0, height, rows + 1).round().astype(int)
    return [(int(xs[c]), int(ys[r]), int(xs[c + 1]), int(ys[r + 1])) for r in range(rows) for c in range(cols)]


def covered(image: Image.Image, box: tuple[int, int, int, int], fill: tuple[int, int, int]) -> Image.Image:
    """A copy of the image with the box (left, top, right, bottom; right and bottom excluded) painted over."""
    copy = image.copy()
    left, top, right, bottom = box
    if right > left and bottom > top:  # a grid finer than a tiny photo has empty cells: nothing to cover
        ImageDraw.Draw(copy).rectangle((left, top, right - 1, bottom - 1), fill=fill)
    return copy


def _batches(images: Iterator[Image.Image], size: int) -> Iterator[list[Image.Image]]:
    """A batch at a time, so the copies are never all in memory at once."""
    while batch := list(islice(images, max(1, size))):
        yield batch


def _working_copy(image: Image.Image) -> Image.Image:
    image = image.convert("RGB")
    scale = min(WORKING_SIDE / min(image.size), (WORKING_PIXELS / (image.width * image.height)) ** 0.5)
    if scale >= 1:
        return image
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                        Image.Resampling.BILINEAR)


def fill_colour(locator: Locator) -> tuple[int, int, int]:
    """The encoder's normalisation mean as a colour: a patch of it is zero input to the network."""
    mean = locator.embedder.backbone.preprocessing.get("mean") or (0.5, 0.5, 0.5)
    return tuple(int(round(255 * float(m))) for m in mean)


def _scorer(locator: Locator, answer: Answer) -> tuple[str, Scorer]:
    """What the answer was decided by, as a function of backbone features."""
    bundle = locator.embedder.bundle
    by_cell = bundle is not None and locator.within_cell and locator.prior is None and answer.cell is not None
    if by_cell and answer.same_photo is None:
        index = list(bundle.hierarchy.fine.tokens).index(answer.cell["token"])
        return "cell", lambda features: np.exp(bundle.cell_log_probs(features, head=locator.head))[:, index]
    ids = [answer.same_photo["id"]] if answer.same_photo else [n.id for n in rested_on(answer)]
    if not ids:
        raise LocateError("the answer rests on no reference photo: there is nothing to explain")
    vectors = [h.vector for h in locator.gallery.retrieve(ids) if h.vector is not None]
    if not vectors:
        raise LocateError("the reference photos the answer rests on were removed meanwhile: ask again")
    references = np.stack(vectors).astype(np.float32)
    references /= np.maximum(np.linalg.norm(references, axis=1, keepdims=True), 1e-12)
    return "retrieval", lambda features: (locator.embedder.vectors(features) @ references.T).mean(axis=1)


def rested_on(answer: Answer) -> list:
    """The neighbours the answer was built from (or, for a photo the gallery holds, its copy among them)."""
    return [answer.neighbours[i] for i in answer.support]
