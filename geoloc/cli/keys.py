"""`geoloc keys`: API keys, stored hashed under the data home; a token is shown once, at creation."""

from __future__ import annotations

import json
import sys

from geoloc.settings import Settings


def _store():
    from geoloc.keys import KeyStore

    return KeyStore(Settings().keys_path)


def cmd_keys_create(args) -> int:
    from geoloc.keys import ADMIN, READER

    collections = [c.strip() for c in (args.collections or "").split(",") if c.strip()]
    key, token = _store().create(ADMIN if args.admin else READER, collections, args.name)
    scope = "every collection" if key.is_admin else ", ".join(key.collections)
    print(f"created {key.role} key {key.id} ({scope}); the token below is shown only once", file=sys.stderr)
    print(token)
    return 0


def cmd_keys_list(args) -> int:
    keys = _store().list()
    if args.json:
        print(json.dumps([k.public() for k in keys], indent=2))
        return 0
    if not keys:
        print("no keys yet: geoloc keys create --admin")
    for k in keys:
        scope = "*" if k.is_admin else ",".join(k.collections)
        state = f"revoked {k.revoked}" if k.revoked else "active"
        print(f"{k.id}\t{k.role}\t{scope}\t{k.created}\t{state}\t{k.name}")
    return 0


def cmd_keys_revoke(args) -> int:
    key = _store().revoke(args.id)
    print(f"revoked {key.role} key {key.id}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("keys", help="manage API keys (stored hashed under the data home)")
    keys = p.add_subparsers(dest="keys_command", required=True)
    k = keys.add_parser("create", help="create a key and print its token (shown once)")
    role = k.add_mutually_exclusive_group(required=True)
    role.add_argument("--admin", action="store_true", help="manages every collection")
    role.add_argument("--reader", action="store_true", help="locates and searches granted collections")
    k.add_argument("--collections", help="reader: comma-separated collections it may search")
    k.add_argument("--name", default="", help="a note on who or what uses the key")
    k.set_defaults(func=cmd_keys_create)
    k = keys.add_parser("list", help="list keys (never their tokens)")
    k.add_argument("--json", action="store_true")
    k.set_defaults(func=cmd_keys_list)
    k = keys.add_parser("revoke", help="revoke a key at once")
    k.add_argument("id")
    k.set_defaults(func=cmd_keys_revoke)
