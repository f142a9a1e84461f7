"""Adaptive S2 partition of the Earth (paper section 3.1) and its coarse/middle/fine hierarchy.

Cells are S2 cells of varying level. Growth starts from the occupied cells at `min_level` and keeps
splitting the most populated cell into its (occupied) children. The split order depends only on the
current cells (ties broken by cell id), so runs with smaller targets stop at earlier states of the same
sequence: every cell of a smaller partition is an ancestor of, or equal to, cells of a larger one. That
is what makes the three partitions of a hierarchy nest.

All cell arithmetic uses the order-preserving int64 leaf ids of `geoloc.cells`, so "photo in cell" is
`lo <= leaf <= hi`, the same test the gallery runs as a payload range filter.
"""

from __future__ import annotations

import heapq
import json
from dataclasses import dataclass, field

import numpy as np
import s2sphere

from geoloc import cells
from geoloc.geodesy import spherical_mean, to_unit_vectors

PARTITION_FORMAT = "geoloc.partition"
HIERARCHY_FORMAT = "geoloc.hierarchy"
FORMAT_VERSION = 1
_SHIFT = 1 << 63  # geoloc.cells stores S2 ids shifted into int64


def leaf_ids(lat, lon) -> np.ndarray:
    """int64 S2 leaf ids (see geoloc.cells) of each point."""
    lat = np.asarray(lat, dtype=np.float64).reshape(-1)
    lon = np.asarray(lon, dtype=np.float64).reshape(-1)
    return np.fromiter((cells.leaf_int64(a, b) for a, b in zip(lat, lon)), dtype=np.int64, count=len(lat))


@dataclass
class Partition:
    """Disjoint S2 cells, indexed 0..n-1 in S2 (Hilbert) order."""

    tokens: list[str]
    centres: np.ndarray  # (n, 2) lat, lon in degrees: spherical mean of the cell's photos
    counts: np.ndarray  # (n,) training photos per cell
    levels: np.ndarray = field(init=False)
    _lo: np.ndarray = field(init=False, repr=False)
    _hi: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        self.tokens = list(self.tokens)
        self.centres = np.asarray(self.centres, dtype=np.float64).reshape(-1, 2)
        self.counts = np.asarray(self.counts, dtype=np.int64)
        ids = [s2sphere.CellId.from_token(t) for t in self.tokens]
        if any(not c.is_valid() for c in ids):
            raise ValueError("partition has an invalid S2 token")
        self.levels = np.array([c.level() for c in ids], dtype=np.int64)
        ranges = np.array([cells.leaf_range(t) for t in self.tokens], dtype=np.int64).reshape(-1, 2)
        self._lo, self._hi = ranges[:, 0], ranges[:, 1]
        if len(self.centres) != len(self.tokens) or len(self.counts) != len(self.tokens):
            raise ValueError("tokens, centres and counts must have the same length")
        if np.any(self._lo[1:] <= self._hi[:-1]):
            raise ValueError("partition cells must be sorted and must not overlap")

    def __len__(self) -> int:
        return len(self.tokens)

    def leaf_range(self, i: int) -> tuple[int, int]:
        """Inclusive int64 leaf-id range of cell i (the gallery's filter for this cell)."""
        return int(self._lo[i]), int(self._hi[i])

    def assign_leaves(self, leaves) -> np.ndarray:
        """Cell index of each int64 leaf id, -1 where no cell covers it."""
        leaves = np.asarray(leaves, dtype=np.int64)
        j = np.searchsorted(self._lo, leaves, side="right") - 1
        inside = j >= 0
        inside[inside] = leaves[inside] <= self._hi[j[inside]]
        return np.where(inside, j, -1)

    def assign(self, lat, lon) -> np.ndarray:
        """Cell index of each point, -1 where no cell covers it."""
        return self.assign_leaves(leaf_ids(lat, lon))

    def centre_unit_vectors(self) -> np.ndarray:
        return to_unit_vectors(self.centres[:, 0], self.centres[:, 1])

    def to_dict(self) -> dict:
        return {
            "format": PARTITION_FORMAT,
            "version": FORMAT_VERSION,
            "tokens": self.tokens,
            "centres": self.centres.tolist(),
            "counts": self.counts.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Partition:
        _check_format(data, PARTITION_FORMAT)
        return cls(data["tokens"], np.array(data["centres"], dtype=np.float64), np.array(data["counts"]))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Partition:
        return cls.from_dict(json.loads(text))


@dataclass
class Hierarchy:
    """Nested coarse, middle and fine partitions; parents map each fine cell to its ancestors."""

    coarse: Partition
    middle: Partition
    fine: Partition
    parent_middle: np.ndarray = field(init=False)  # (n_fine,) middle cell containing each fine cell
    parent_coarse: np.ndarray = field(init=False)  # (n_fine,) coarse cell containing each fine cell

    def __post_init__(self):
        self.parent_middle = _containing(self.middle, self.fine)
        self.parent_coarse = _containing(self.coarse, self.fine)

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": HIERARCHY_FORMAT,
                "version": FORMAT_VERSION,
                "coarse": self.coarse.to_dict(),
                "middle": self.middle.to_dict(),
                "fine": self.fine.to_dict(),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Hierarchy:
        data = json.loads(text)
        _check_format(data, HIERARCHY_FORMAT)
        return cls(*(Partition.from_dict(data[name]) for name in ("coarse", "middle", "fine")))


def adaptive_partition(
    lat,
    lon,
    *,
    n_cells: int | None = None,
    max_per_cell: int | None = None,
    min_per_cell: int = 1,
    min_level: int = 0,
    max_level: int = 13,
) -> Partition:
    """Split the most populated cell until there are `n_cells` cells holding at least `min_per_cell`
    photos, or until no splittable cell holds more than `max_per_cell` (with both given, whichever
    comes first). Cells never go deeper than `max_level`; cells under `min_per_cell` are dropped and
    their photos left unassigned."""
    return _partition(leaf_ids(lat, lon), lat, lon, n_cells, max_per_cell, min_per_cell, min_level, max_level)


def adaptive_hierarchy(
    lat,
    lon,
    n_cells: tuple[int, int, int],
    *,
    min_per_cell: int = 1,
    min_level: int = 0,
    max_level: int = 13,
) -> Hierarchy:
    """Three snapshots of one growth with targets (coarse, middle, fine): nested by construction."""
    if not n_cells[0] <= n_cells[1] <= n_cells[2]:
        raise ValueError(f"targets must grow from coarse to fine, got {n_cells}")
    leaves = leaf_ids(lat, lon)
    parts = [_partition(leaves, lat, lon, n, None, min_per_cell, min_level, max_level) for n in n_cells]
    return Hierarchy(*parts)


def _partition(leaves, lat, lon, n_cells, max_per_cell, min_per_cell, min_level, max_level) -> Partition:
    if n_cells is None and max_per_cell is None:
        raise ValueError("give n_cells or max_per_cell")
    if not 0 <= min_level <= max_level <= s2sphere.CellId.MAX_LEVEL:
        raise ValueError(f"need 0 <= min_level <= max_level <= 30, got {min_level}, {max_level}")
    order = np.argsort(leaves, kind="stable")
    sorted_leaves = leaves[order]
    chosen = _grow(sorted_leaves, n_cells, max_per_cell, max(min_per_cell, 1), min_level, max_level)
    lat = np.asarray(lat, dtype=np.float64).reshape(-1)[order]
    lon = np.asarray(lon, dtype=np.float64).reshape(-1)[order]
    tokens, centres, counts = [], [], []
    for cell in sorted(chosen, key=lambda c: c.id()):
        lo, hi = _span(sorted_leaves, cell)
        if hi - lo < min_per_cell:
            continue
        tokens.append(cell.to_token())
        centres.append(spherical_mean(lat[lo:hi], lon[lo:hi]))
        counts.append(hi - lo)
    return Partition(tokens, np.array(centres).reshape(-1, 2), np.array(counts, dtype=np.int64))


def _grow(sorted_leaves, n_cells, max_per_cell, min_per_cell, min_level, max_level) -> list:
    """The greedy splitting of section 3.1. A cell stays whole when it is at `max_level` or when all its
    children would fall under `min_per_cell`: that split would only drop photos, never add a cell."""
    heap = []  # (-count, cell id): the most populated first, ties by id, so the order is deterministic
    for parent in np.unique(_parent_ids(sorted_leaves, min_level)):
        cell = s2sphere.CellId(int(parent) + _SHIFT)
        lo, hi = _span(sorted_leaves, cell)
        heapq.heappush(heap, (-(hi - lo), cell.id()))
    viable = sum(1 for neg, _ in heap if -neg >= min_per_cell)
    done = []
    while heap:
        if n_cells is not None and viable >= n_cells:
            break
        if max_per_cell is not None and -heap[0][0] <= max_per_cell:
            break
        neg, cid = heapq.heappop(heap)
        cell = s2sphere.CellId(cid)
        children = [] if cell.level() >= max_level else [(c, *_span(sorted_leaves, c)) for c in cell.children()]
        sizes = [hi - lo for _, lo, hi in children]
        if not any(size >= min_per_cell for size in sizes):
            done.append(cell)
            continue
        viable += sum(size >= min_per_cell for size in sizes) - 1  # the parent had a viable child: viable
        for (child, _, _), size in zip(children, sizes):
            if size:
                heapq.heappush(heap, (-size, child.id()))
    return done + [s2sphere.CellId(cid) for _, cid in heap]


def _parent_ids(leaves: np.ndarray, level: int) -> np.ndarray:
    """int64 ids of the ancestors at `level`. S2's parent rule (clear the bits below the level's lowest
    bit, set that bit) never touches bit 63, so it holds unchanged on the shifted int64 ids."""
    lsb = 1 << (2 * (s2sphere.CellId.MAX_LEVEL - level))
    return (leaves & np.int64(~(2 * lsb - 1))) | np.int64(lsb)


def _span(sorted_leaves, cell) -> tuple[int, int]:
    """[lo, hi) indices of the sorted leaves inside `cell`."""
    lo_id = np.int64(cells.to_int64(cell.range_min().id()))
    hi_id = np.int64(cells.to_int64(cell.range_max().id()))
    return (
        int(np.searchsorted(sorted_leaves, lo_id, side="left")),
        int(np.searchsorted(sorted_leaves, hi_id, side="right")),
    )


def _containing(outer: Partition, inner: Partition) -> np.ndarray:
    """Index of the outer cell containing each inner cell; raises if some inner cell has none."""
    j = outer.assign_leaves(inner._lo)
    ok = j >= 0
    ok[ok] = inner._hi[ok] <= outer._hi[j[ok]]
    if not np.all(ok):
        bad = [inner.tokens[i] for i in np.flatnonzero(~ok)[:5]]
        raise ValueError(f"partitions do not nest: no parent for cells {bad}")
    return j


def _check_format(data: dict, expected: str) -> None:
    if not isinstance(data, dict) or data.get("format") != expected:
        raise ValueError(f"not a {expected} document")
    if data.get("version") != FORMAT_VERSION:
        raise ValueError(f"unsupported {expected} version {data.get('version')!r} (supported: {FORMAT_VERSION})")
