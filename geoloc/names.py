"""Names users give things (collections): what is accepted, checked in one place for every entry point."""

from __future__ import annotations

import re

# fullmatch: a trailing newline is not part of a valid name
_COLLECTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_collection_name(name: str) -> str:
    if not isinstance(name, str) or not _COLLECTION_NAME.fullmatch(name):
        raise ValueError(f"invalid collection name {name!r}: use 1-64 letters, digits, '_', '.' or '-', "
                         f"starting with a letter or digit")
    return name
