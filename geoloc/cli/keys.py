"""`geoloc keys`: API keys, stored hashed under the data home; a token is shown once, at creation."""

from __future__ import annotations

import argparse
import re
import sys
from datetime import date, datetime, time, timedelta, timezone

from geoloc.cli.common import add_command, add_group, add_list_option, print_json, result
from geoloc.settings import Settings

UNITS = {"h": "hours", "d": "days", "w": "weeks"}


def _store():
    from geoloc.keys import KeyStore

    return KeyStore(Settings().keys_path)


def duration(text: str) -> timedelta:
    """'12h', '30d', '2w'."""
    match = re.fullmatch(r"([1-9][0-9]{0,5})([hdw])", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number and h, d or w (12h, 30d, 2w)")
    return timedelta(**{UNITS[match[2]]: int(match[1])})


def moment(text: str) -> datetime:
    """An ISO date (the key works through that day, UTC) or date and time (naive: UTC)."""
    try:
        day = date.fromisoformat(text)
    except ValueError:
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: give a date (2025-12-31) or a date and time "
                                             f"(2025-12-31T18:00+01:00)") from None
    return datetime.combine(day + timedelta(days=1), time(), timezone.utc)


def cmd_keys_create(args) -> int:
    from geoloc.keys import ADMIN, READER

    expires = datetime.now(timezone.utc) + args.expires_in if args.expires_in else args.expires
    key, token = _store().create(ADMIN if args.admin else READER, args.collections or [], args.name, expires=expires,
                                 requests_per_minute=args.requests_per_minute, photos_per_hour=args.photos_per_hour)
    scope = ", ".join(key.collections) or "every collection"
    until = f", expires {key.expires}" if key.expires else ""
    print(f"created {key.role} key {key.id} ({scope}{until}); the token below is shown only once", file=sys.stderr)
    result(args, {**key.public(), "token": token}, token)
    return 0


def _limits(key, settings: Settings) -> str:
    requests = key.requests_per_minute or settings.key_requests_per_minute
    photos = key.photos_per_hour or settings.key_photos_per_hour
    return f"{requests} req/min, {photos} photos/h"


def cmd_keys_list(args) -> int:
    keys, settings = _store().list(), Settings()
    if args.json:
        print_json([{**k.public(), "state": k.state(), "limits": {
            "requests_per_minute": k.requests_per_minute or settings.key_requests_per_minute,
            "photos_per_hour": k.photos_per_hour or settings.key_photos_per_hour}} for k in keys])
        return 0
    if not keys:
        print("no keys yet: geoloc keys create --admin")
        return 0
    print("id\trole\tcollections\tcreated\texpires\tstate\tlimits\tname")
    for k in keys:
        state = f"revoked {k.revoked}" if k.revoked else k.state()
        print(f"{k.id}\t{k.role}\t{','.join(k.collections) or '*'}\t{k.created}\t{k.expires or 'never'}\t"
              f"{state}\t{_limits(k, settings)}\t{k.name}")
    return 0


def cmd_keys_revoke(args) -> int:
    key = _store().revoke(args.id)
    result(args, {**key.public(), "state": key.state()}, f"revoked {key.role} key {key.id}")
    return 0


def _add_create(keys) -> None:
    k = add_command(keys, "create", cmd_keys_create, help="create a key and print its token (shown once)")
    role = k.add_mutually_exclusive_group(required=True)
    role.add_argument("--admin", action="store_true", help="manages collections (every one, or --collections)")
    role.add_argument("--reader", action="store_true", help="locates and searches granted collections")
    add_list_option(k, "--collections", metavar="NAME", help="a reader's to search, an admin's to manage "
                                                             "(an admin without them manages every collection)")
    k.add_argument("--name", default="", help="a note on who or what uses the key")
    until = k.add_mutually_exclusive_group()
    until.add_argument("--expires-in", type=duration, metavar="SPAN", help="the key stops working after 12h, 30d, 2w")
    until.add_argument("--expires", type=moment, metavar="DATE",
                       help="the key works through this day (UTC), or until this ISO date and time")
    k.add_argument("--requests-per-minute", type=int, metavar="N",
                   help="this key's request quota (default GEOLOC_KEY_REQUESTS_PER_MINUTE)")
    k.add_argument("--photos-per-hour", type=int, metavar="N",
                   help="this key's photo quota (default GEOLOC_KEY_PHOTOS_PER_HOUR)")


def register(sub) -> None:
    keys = add_group(sub, "keys", help="manage API keys (stored hashed under the data home)")
    _add_create(keys)
    k = add_command(keys, "list", cmd_keys_list,
                    help="list keys with their scope, expiry, state and quotas (never their tokens)")
    k = add_command(keys, "revoke", cmd_keys_revoke, help="revoke a key at once")
    k.add_argument("id")
