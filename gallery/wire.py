"""How a gallery operation travels between a process and the API that holds the embedded gallery open.

One message carries a JSON header (the operation and its arguments, or its answer or fault: ids, payloads,
filter, counts) and, after it, the vectors as raw float32 little-endian: a 64-photo batch of 1280-d
embeddings is 328 KB of floats instead of several MB of JSON numbers, and nothing is parsed digit by digit.
Layout: header length (uint32 little-endian), header (UTF-8 JSON), rows x dim float32.
"""

from __future__ import annotations

import dataclasses
import struct

import numpy as np
import orjson

from geoloc.gallery.base import Hit, SearchFilter

_LENGTH = struct.Struct("<I")
_FLOAT = np.dtype("<f4")


def pack(header: dict, vectors: np.ndarray | None = None) -> bytes:
    if vectors is not None:
        vectors = np.ascontiguousarray(vectors, dtype=_FLOAT)
        header = {**header, "shape": list(vectors.shape)}
    head = orjson.dumps(header)
    return b"".join([_LENGTH.pack(len(head)), head, b"" if vectors is None else vectors.tobytes()])


def unpack(body: bytes) -> tuple[dict, np.ndarray | None]:
    """The header and the vectors (rows x dim float32, None if the body has none); ValueError if malformed."""
    if len(body) < _LENGTH.size:
        raise ValueError("a gallery message shorter than its header length")
    (length,) = _LENGTH.unpack_from(body)
    end = _LENGTH.size + length
    header = orjson.loads(body[_LENGTH.size:end])
    if not isinstance(header, dict):
        raise ValueError("a gallery message's header is not a JSON object")
    shape = header.pop("shape", None)
    if shape is None:
        return header, None
    vectors = np.frombuffer(body, dtype=_FLOAT, offset=end)
    return header, vectors.reshape([int(n) for n in shape])


def filter_out(where: SearchFilter | None) -> dict | None:
    return None if where is None else dataclasses.asdict(where)


def filter_in(value: dict | None) -> SearchFilter | None:
    if value is None:
        return None
    tuples = {name: None if value.get(name) is None else tuple(value[name]) for name in ("radius", "box")}
    cells = value.get("cell_ranges")
    return SearchFilter(collections=value.get("collections"),
                        cell_ranges=None if cells is None else [(int(lo), int(hi)) for lo, hi in cells], **tuples)


def hits_out(hits: list[Hit]) -> tuple[dict, np.ndarray | None]:
    """Hits as a header and, when they carry vectors (all of them do or none), those vectors."""
    header = {"hits": [[h.id, h.score, h.payload] for h in hits]}
    with_vectors = bool(hits) and hits[0].vector is not None
    return header, np.stack([h.vector for h in hits]) if with_vectors else None


def hits_in(header: dict, vectors: np.ndarray | None) -> list[Hit]:
    rows = header["hits"]
    return [Hit(id_, float(score), payload, None if vectors is None else vectors[i])
            for i, (id_, score, payload) in enumerate(rows)]
