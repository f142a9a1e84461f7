"""The embedded gallery a serving API holds open, lent to the workers and commands of its host (gallery.remote).

A Qdrant Edge shard admits one process, so the API owns every model's store and the others send their
gallery operations here: one message each way per operation (gallery.wire) over a Unix socket in the data
home, Python's multiprocessing.connection, whose handshake proves both sides know GEOLOC_INTERNAL_TOKEN
(HMAC challenge) before any operation is read. A thread per connected process; each operation is one call
on the store the API already holds. Faults go back as error codes that gallery.remote raises again as the
same exceptions. Lent only by an API holding the embedded gallery itself and given the secret.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from multiprocessing import AuthenticationError
from multiprocessing.connection import Connection, Listener
from pathlib import Path

import numpy as np

from geoloc.gallery.base import Gallery, GalleryError, GalleryPoint, NoGallery
from geoloc.gallery.faults import GalleryUnavailable
from geoloc.gallery.open import OWNER_SOCKET, registered_stores
from geoloc.gallery.wire import filter_in, hits_out, pack, unpack
from geoloc.settings import Settings

log = logging.getLogger(__name__)
Answer = tuple[dict, np.ndarray | None]
HeldStore = Callable[[str | None, int | None, dict | None], tuple[str, Gallery]]
# faults -> the codes gallery.remote raises again as the same exceptions
CODES: list[tuple[type[Exception], str]] = [
    (NoGallery, "no_gallery"), (GalleryUnavailable, "gallery_unavailable"), (GalleryError, "gallery_error"),
    ((ValueError, KeyError, TypeError, IndexError), "invalid_gallery_request")]


def _upsert(gallery: Gallery, head: dict, vectors: np.ndarray | None) -> Answer:
    gallery.upsert([GalleryPoint(id_, vector, payload)
                    for id_, vector, payload in zip(head["ids"], vectors, head["payloads"], strict=True)])
    return {}, None


def _scroll(gallery, head: dict, _) -> Answer:
    hits, after = gallery.scroll_page(filter_in(head["where"]), head["offset"], int(head["batch"]),
                                      bool(head["with_vectors"]))
    answer, vectors = hits_out(hits)
    return {**answer, "next": after if after is None or isinstance(after, int) else str(after)}, vectors


def _optimize(gallery: Gallery, *_) -> Answer:
    return {"search": gallery.optimize()}, None


ON_A_STORE: dict[str, Callable[[Gallery, dict, np.ndarray | None], Answer]] = {
    "upsert": _upsert,
    "search": lambda gallery, head, vectors: hits_out(gallery.search(vectors[0], int(head["k"]),
                                                                     filter_in(head["where"]))),
    "count": lambda gallery, head, _: ({"count": gallery.count(filter_in(head["where"]))}, None),
    "collections": lambda gallery, *_: ({"collections": gallery.collections()}, None),
    "delete": lambda gallery, head, _: ({"deleted": gallery.delete(filter_in(head["where"]), head["ids"])}, None),
    "scroll": _scroll,
    "retrieve": lambda gallery, head, _: hits_out(gallery.retrieve(head["ids"])),
    "embedding_model": lambda gallery, *_: ({"embedding_model": gallery.embedding_model()}, None),
    "optimize": _optimize,
}


class GalleryLender:
    """Serves the stores `held_store` hands out (Runtime.held_store) on a Unix socket until closed."""

    def __init__(self, settings: Settings, held_store: HeldStore):
        self.settings, self.path = settings, settings.home / OWNER_SOCKET
        self._held_store = held_store
        self._listener = _listen(self.path, settings.internal_token)
        os.chmod(self.path, 0o600)  # the token guards it too; nobody else on the host needs to connect
        self._closing = False
        self._lock = threading.Lock()
        self._served: dict[Connection, threading.Thread] = {}
        self._accepting = threading.Thread(target=self._accept, name=f"geoloc-gallery-lender:{self.path}",
                                           daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while True:
            try:
                conn = self._listener.accept()  # the HMAC handshake happens here
            except AuthenticationError as exc:  # the client is told too
                log.warning("refused a process beside the API: wrong GEOLOC_INTERNAL_TOKEN (%s)", exc)
                continue
            except (OSError, EOFError) as exc:
                if self._closing:
                    return
                log.warning("a process beside the API could not connect to its gallery: %s", exc)
                continue
            with self._lock:
                if self._closing:
                    conn.close()
                    return
                thread = threading.Thread(target=self._serve, args=(conn,), name=f"geoloc-gallery-lent:{self.path}",
                                          daemon=True)
                self._served[conn] = thread
            thread.start()

    def _serve(self, conn: Connection) -> None:
        try:
            while True:
                conn.send_bytes(self.answer(conn.recv_bytes()))
        except (EOFError, OSError):  # the process went away, or the API is closing
            pass
        finally:
            with self._lock:  # under the lock: close() never hangs up a number the system has given again
                self._served.pop(conn, None)
                conn.close()

    def answer(self, message: bytes) -> bytes:
        try:
            head, vectors = unpack(message)
            operation = head.pop("op")
            if operation == "stores":
                return pack({"stores": registered_stores(self.settings)})
            if operation == "open":
                model_id, gallery = self._held_store(head.get("model"), head.get("dim"), head.get("encoder"))
                return pack({"model": model_id, "dim": gallery.dim})
            if operation not in ON_A_STORE:
                raise ValueError(f"no gallery operation {operation!r}")
            return pack(*ON_A_STORE[operation](self._held_store(head["model"], None, None)[1], head, vectors))
        except Exception as exc:  # noqa: BLE001 - every fault goes back to the caller, none ends the connection
            code = next((code for kinds, code in CODES if isinstance(exc, kinds)), None)
            if code is None:
                log.exception("a gallery operation lent to a process beside the API failed")
            message = str(exc) if code != "invalid_gallery_request" else f"{type(exc).__name__}: {exc}"
            return pack({"error": {"code": code or "owner_error", "message": message}})

    def close(self) -> None:
        """Stop accepting, end every connection (an operation under way finishes first), remove the socket."""
        with self._lock:
            self._closing = True
        with socket.socket(socket.AF_UNIX) as wake:  # accept() returns: EOF before any handshake
            try:
                wake.connect(str(self.path))
            except OSError:
                pass
        self._accepting.join(timeout=10)
        self._listener.close()  # unlinks the socket file
        with self._lock:
            served = list(self._served.items())
            for conn, _ in served:
                _hang_up(conn)
        for _, thread in served:
            thread.join(timeout=60)

    def __enter__(self) -> GalleryLender:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def lend_gallery(settings: Settings, held_store: HeldStore) -> GalleryLender | None:
    """A lender when this process holds the embedded gallery itself and has the secret; else None."""
    if not settings.internal_token or settings.qdrant_url or settings.gallery_via_api or settings.edge_shared:
        return None
    try:
        return GalleryLender(settings, held_store)
    except OSError as exc:
        log.error("this API lends its gallery to no process: %s", exc)
        return None


def _listen(path: Path, token: str) -> Listener:
    """A listener on `path`, in place of a socket file left by a process that ended without removing it."""
    if len(os.fsencode(path)) > 107:
        raise OSError(f"the socket path {path} is longer than a Unix socket allows (107 bytes): "
                      f"use a shorter GEOLOC_HOME")
    if path.exists() or path.is_symlink():
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(path))
            except ConnectionRefusedError:
                path.unlink()
            else:
                raise OSError(f"another process already lends the gallery at {path}")
    return Listener(str(path), family="AF_UNIX", authkey=token.encode())


def _hang_up(conn: Connection) -> None:
    """End a connection whose thread waits on it: shutting the socket down wakes the read, closing does not."""
    try:
        with socket.socket(fileno=os.dup(conn.fileno())) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed by its thread
        pass
