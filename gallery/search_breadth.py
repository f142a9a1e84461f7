"""How many candidates an HNSW search must keep (hnsw_ef) to find the exact top 10, measured on the store itself.

The breadth needed grows with the store and depends on its graph and its vectors: 512 candidates find 0.99 of the
exact top 10 among 100,000 photos and 0.64 among a million, where 2048 are needed (README "The gallery at scale").
So each index build measures it on the store it built: PROBES queries made from its own photos are searched
exactly and with each breadth of LADDER in turn, and the first whose recall@10 reaches TARGET becomes the
store's own. A photo the store has never seen lies between the photos it holds, not on one of them, so a probe is
the midpoint of two stored photos. Measured against held-out real photos on a million jittered copies of the dev
photos (bench/gallery_scale.py), midpoints found 0.898 / 0.937 of the exact top 10 at 1024 / 2048 where the
held-out photos found 0.922 / 0.984: harder than real queries, but rising with them. Stored photos searched as
they are would flatter the graph (its search starts from their own links); jittered copies of them (noise,
cosine 0.71) did not track the held-out photos at all: 0.88 to 0.91 whatever the breadth, as each one's nearest
photos were its original's near-equidistant copies, which the graph finds poorly from inside.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

PROBES, K, TARGET = 200, 10, 0.99
LEVEL = 0.005  # short of TARGET, a breadth this close to the best recall measured will do: more only costs time
# up to 2048: held-out photos gained at most 0.004 from 4096 at 200,000 and a million photos, in 1.6 to 2x the
# time, while midpoints, harder than real queries, still gained 0.01 there (bench/results/gallery_scale_*)
LADDER = (64, 128, 256, 512, 1024, 2048)

# a probe vector and a breadth (None: exact) -> the ids of its K nearest stored photos
Search = Callable[[list[float], "int | None"], Sequence[str]]


@dataclass(frozen=True)
class Breadth:
    """The measured breadth of one store's searches."""

    hnsw_ef: int
    recall_at_10: float  # at hnsw_ef, against exact search, averaged over the probes
    target_met: bool  # False: no breadth of LADDER reached TARGET; hnsw_ef is where recall levelled off (LEVEL)
    probes: int
    recall_by_ef: dict[str, float]  # every breadth tried
    seconds: float  # the measurement's own time

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data) -> Breadth | None:
        """None for anything but a whole record (an older or damaged gallery.json searches at the default)."""
        try:
            breadth = cls(int(data["hnsw_ef"]), float(data["recall_at_10"]), bool(data["target_met"]),
                          int(data["probes"]), {str(k): float(v) for k, v in dict(data["recall_by_ef"]).items()},
                          float(data["seconds"]))
        except (KeyError, TypeError, ValueError):
            return None
        return breadth if breadth.hnsw_ef > 0 else None


def midpoints(vectors: np.ndarray) -> np.ndarray:
    """Unit-length midpoints of the first half of `vectors` and the second, pair by pair (2n vectors: n probes)."""
    v = np.asarray(vectors, dtype=np.float64)
    v = v / np.clip(np.linalg.norm(v, axis=1, keepdims=True), 1e-12, None)
    half = len(v) // 2
    middle = v[:half] + v[half:2 * half]
    keep = np.linalg.norm(middle, axis=1) > 1e-6  # opposite photos have no midpoint
    return (middle[keep] / np.linalg.norm(middle[keep], axis=1, keepdims=True)).astype(np.float32)


def measure(probes: np.ndarray, search: Search, ladder: Sequence[int] = LADDER,
            target: float = TARGET) -> Breadth | None:
    """The smallest breadth of `ladder` whose recall@K on `probes` reaches `target`; short of it, the smallest
    within LEVEL of the best recall measured; None without probes (an empty store)."""
    started = time.perf_counter()
    pairs = [(q, truth) for q in np.asarray(probes, dtype=np.float32).tolist() if (truth := set(search(q, None)))]
    if not pairs:
        return None
    by_ef: dict[int, float] = {}
    for ef in ladder:
        found = [len(truth.intersection(search(q, ef))) / len(truth) for q, truth in pairs]
        by_ef[ef] = round(float(np.mean(found)), 4)  # as reported, so 0.99 reached is 0.99 whatever the float sum
        if by_ef[ef] >= target:
            break
    enough = target if max(by_ef.values()) >= target else round(max(by_ef.values()) - LEVEL, 4)
    best = next(ef for ef, recall in by_ef.items() if recall >= enough)
    return Breadth(best, by_ef[best], by_ef[best] >= target, len(pairs), {str(ef): r for ef, r in by_ef.items()},
                   round(time.perf_counter() - started, 2))
