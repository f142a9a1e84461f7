"""`--dry-run`: the real job runs against a gallery that answers every read and records the deletes asked of
it instead of making them, so a preview shows what the job itself would decide and changes nothing."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from geoloc.gallery.base import Gallery, GalleryPoint, Hit, SearchFilter

EXAMPLES = 5


class RecordingGallery(Gallery):
    def __init__(self, gallery: Gallery):
        self.gallery, self.dim = gallery, gallery.dim
        self.would_delete = 0
        self.examples: list[Hit] = []

    def delete(self, where: SearchFilter | None = None, ids: Sequence[str] | None = None) -> int:
        """How many points would go: those matching `where` or, with ids (as the prune jobs ask), those of
        the ids that exist in where's collections."""
        if ids is None:
            count, hits = self.gallery.count(where), self.gallery.scroll(where, batch=EXAMPLES)
        else:
            named = None if where is None or where.collections is None else set(where.collections)
            matched = [h for h in self.gallery.retrieve(ids) if named is None or h.payload.get("collection") in named]
            count, hits = len(matched), iter(matched)
        for hit in hits:
            if len(self.examples) >= EXAMPLES:
                break
            self.examples.append(hit)
        self.would_delete += count
        return count

    def upsert(self, points: Sequence[GalleryPoint]) -> None:
        raise RuntimeError("a dry run writes nothing")

    def search(self, vector: np.ndarray, k: int, where: SearchFilter | None = None) -> list[Hit]:
        return self.gallery.search(vector, k, where)

    def count(self, where: SearchFilter | None = None) -> int:
        return self.gallery.count(where)

    def collections(self) -> dict[str, int]:
        return self.gallery.collections()

    def scroll(self, where: SearchFilter | None = None, with_vectors: bool = False,
               batch: int = 512) -> Iterator[Hit]:
        return self.gallery.scroll(where, with_vectors, batch)

    def retrieve(self, ids: Sequence[str]) -> list[Hit]:
        return self.gallery.retrieve(ids)

    def close(self) -> None:
        """The gallery it reads stays open: it belongs to the caller."""
