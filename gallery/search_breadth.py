"""How many candidates an HNSW search must keep (hnsw_ef) to find the exact top 10, measured on the store itself.

The breadth needed grows with the store and depends on its graph and its vectors: 512 candidates find 0.99 of the
exact top 10 among 100,000 photos and 0.64 among a million, where 2048 are needed (README "The gallery at scale").
So each index build measures it on the store it built: PROBES stored vectors, jittered, are searched exactly and
with each breadth of LADDER in turn, and the first whose recall@10 reaches TARGET becomes the store's own.
A stored vector searched as it is would flatter the graph, whose search would start from its own linked
neighbours; a jittered copy (cosine about 0.71 with it, as a photo is with its nearest other photo) is a new
photo among them, and, being off the photos' manifold, a harder query than most real ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

PROBES, K, TARGET = 200, 10, 0.99
LEVEL = 0.005  # short of TARGET, a breadth this close to the best recall measured will do: more only costs time
LADDER = (64, 128, 256, 512, 1024, 2048, 4096)
JITTER = 1.0  # Gaussian noise per dimension, relative to a unit vector's 1/sqrt(dim)
SEED = 0

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


def jittered(vectors: np.ndarray, jitter: float = JITTER, seed: int = SEED) -> np.ndarray:
    """Unit-length copies of `vectors` moved by Gaussian noise of `jitter` / sqrt(dim) per dimension."""
    v = np.asarray(vectors, dtype=np.float64)
    v = v / np.clip(np.linalg.norm(v, axis=1, keepdims=True), 1e-12, None)
    noisy = v + np.random.default_rng(seed).normal(0.0, jitter / np.sqrt(v.shape[1]), v.shape)
    return (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)


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
    enough = target if max(by_ef.values()) >= target else max(by_ef.values()) - LEVEL
    best = next(ef for ef, recall in by_ef.items() if recall >= enough)
    return Breadth(best, by_ef[best], by_ef[best] >= target, len(pairs), {str(ef): r for ef, r in by_ef.items()},
                   round(time.perf_counter() - started, 2))
