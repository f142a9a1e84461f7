"""S2 cell ids as order-preserving int64 payloads.

Every S2 cell, at every level, covers one contiguous range of leaf ids, so "inside this cell" is one
integer range filter on the leaf id of each photo, whatever partition the classifier was trained on.
Qdrant integer payloads are signed 64-bit; shifting the unsigned id by 2**63 keeps the order.
"""

from __future__ import annotations

import s2sphere

_SHIFT = 1 << 63


def to_int64(cell_id: int) -> int:
    return cell_id - _SHIFT


def leaf_int64(lat: float, lon: float) -> int:
    """The photo's S2 leaf cell (level 30) as a shifted int64."""
    return to_int64(s2sphere.CellId.from_lat_lng(s2sphere.LatLng.from_degrees(lat, lon)).id())


def leaf_range(token: str) -> tuple[int, int]:
    """Inclusive int64 range of leaf ids inside the cell with this S2 token."""
    cell = s2sphere.CellId.from_token(token)
    return to_int64(cell.range_min().id()), to_int64(cell.range_max().id())


def corners(token: str) -> list[list[float]]:
    """The four vertices of the cell with this S2 token, [[lat, lon], ...] in degrees, counter-clockwise.
    The cell's edges are geodesics: straight lines between the corners on a flat map only approximate them."""
    cell = s2sphere.Cell(s2sphere.CellId.from_token(token))
    vertices = (s2sphere.LatLng.from_point(cell.get_vertex(k)) for k in range(4))
    return [[v.lat().degrees, v.lng().degrees] for v in vertices]
