"""How a gallery search is put to a Qdrant Edge shard: its filter and its search parameters, shared by the
serving gallery (gallery.edge) and the process that builds and measures an index (gallery.edge_index)."""

from __future__ import annotations

from collections.abc import Sequence

from qdrant_edge import (
    FieldCondition,
    Filter,
    GeoPoint,
    GeoRadius,
    HasIdCondition,
    MatchAny,
    QuantizationSearchParams,
    RangeFloat,
    SearchParams,
)

from geoloc.gallery.base import SearchFilter, box_ranges, float_bounds

# the ground truth a measured breadth is held against: every vector scored, the float32 originals only
EXACT = SearchParams(exact=True, quantization=QuantizationSearchParams(ignore=True, rescore=False))


def edge_filter(where: SearchFilter | None, ids: Sequence[str] | None = None) -> Filter | None:
    """SearchFilter (and ids) -> one Edge Filter: its `must` conditions AND at least one of its `should` (cells)."""
    must, should = [], None
    if ids is not None:
        must.append(HasIdCondition(set(ids)))
    if where is not None:
        if where.collections is not None:
            must.append(FieldCondition("collection", match=MatchAny(list(where.collections))))
        if where.cell_ranges is not None:
            # at the top level: nested under `must`, a cell's every point was checked again (5.1 against 3.2 ms
            # for 10,000 of a million photos); no cell must match nothing (an empty `should` matches everything)
            should = [_in_cell(lo, hi) for lo, hi in where.cell_ranges] or None
            must.extend([] if should else [HasIdCondition(set())])
        if where.radius is not None:
            lat, lon, km = where.radius
            must.append(FieldCondition("location", geo_radius=GeoRadius(GeoPoint(lon=lon, lat=lat), km * 1000.0)))
        if where.box is not None:
            (south, north), lon_ranges = box_ranges(where.box)
            must.append(FieldCondition("location.lat", range=RangeFloat(gte=south, lte=north)))
            must.append(Filter(should=[FieldCondition("location.lon", range=RangeFloat(gte=w, lte=e))
                                       for w, e in lon_ranges]))
    return Filter(must=must or None, should=should) if must or should else None


def _in_cell(lo: int, hi: int) -> FieldCondition:
    gte, lte = float_bounds(lo, hi)
    return FieldCondition("s2", range=RangeFloat(gte=gte, lte=lte))


def search_params(exact: bool, hnsw_ef: int) -> SearchParams:
    """Quantized vectors, where the shard has them, only pick candidates: the originals rank them."""
    return SearchParams(exact=exact, hnsw_ef=hnsw_ef,
                        quantization=QuantizationSearchParams(rescore=True, oversampling=2.0))
