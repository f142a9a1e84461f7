"""What every command shares: user errors, settings from the environment and the options, the runtime."""

from __future__ import annotations

import argparse
import json
import sys

from geoloc.gallery.base import GalleryError
from geoloc.ingest.images import ImageError
from geoloc.ingest.sources import SourceError
from geoloc.locate import LocateError
from geoloc.runtime import Runtime
from geoloc.settings import Settings


class UserError(Exception):
    """Something the user can fix; printed as one line, exit status 2."""


USER_ERRORS = (UserError, SourceError, GalleryError, LocateError, ImageError, FileNotFoundError, ValueError)
MODEL_OPTIONS = ("bundle", "backbone", "checkpoint", "device", "batch_size")


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by the model options given on the command line."""
    settings = Settings()
    for option in MODEL_OPTIONS:
        if getattr(args, option, None):
            setattr(settings, option, getattr(args, option))
    return settings


def runtime_from(args: argparse.Namespace) -> Runtime:
    """A model named on the command line is used as named; otherwise the gallery's serving model."""
    named = any(getattr(args, option, None) for option in ("bundle", "backbone", "checkpoint"))
    return Runtime(settings_from(args), follow_serving=not named)


def add_encoder_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", help="image encoder: a name from `geoloc encoders`, clip:ARCH, or a timm model "
                                           "with --checkpoint (default tf_efficientnet_lite0, or GEOLOC_BACKBONE)")
    parser.add_argument("--checkpoint", help="local weights for the encoder: a timm checkpoint (.safetensors or a "
                                             "torch state dict); for clip, a directory with open_clip_config.json "
                                             "and weights, or hf-hub:ORG/REPO in the Hugging Face cache")


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", help="model bundle directory (classifier + RRM); default: retrieval only")
    add_encoder_options(parser)
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:1 ... (default auto)")
    parser.add_argument("--batch-size", type=int, help="photos per backbone batch")


def head_name(name: str) -> str:
    """A registered classifier head (imported only when asked for: the registry lives beside torch)."""
    from geoloc.models.heads import HEADS

    try:
        HEADS.get(name)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return name


class ListOption(argparse.Action):
    """A list option in one syntax for every command: `--opt a,b`, `--opt a b`, or both, and repeatable.
    The first use replaces the default; later uses add to it."""

    def __init__(self, option_strings, dest, nargs="+", **kwargs):
        super().__init__(option_strings, dest, nargs=nargs, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        items = [part.strip() for value in values for part in value.split(",") if part.strip()]
        if not items:
            parser.error(f"{option_string} needs at least one value")
        previous = getattr(namespace, self.dest, None)
        setattr(namespace, self.dest, (list(previous) if previous and previous is not self.default else []) + items)


def add_list_option(parser: argparse.ArgumentParser, *flags: str, help: str, **kwargs) -> None:
    parser.add_argument(*flags, action=ListOption, help=f"{help} (A,B or A B)", **kwargs)


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as one JSON document")


def add_group(sub, name: str, help: str):
    """A command of subcommands (`geoloc keys create`): the subparsers to add them to."""
    return sub.add_parser(name, help=help).add_subparsers(dest=f"{name}_command", required=True)


def add_command(sub, name: str, handler, json: bool = True, **parser_options) -> argparse.ArgumentParser:
    """A subcommand that runs `handler`, with --json unless it prints no result to parse."""
    parser = sub.add_parser(name, **parser_options)
    if json:
        add_json_option(parser)
    parser.set_defaults(func=handler)
    return parser


def print_json(document) -> None:
    print(json.dumps(document, indent=2))


def result(args: argparse.Namespace, document, text: str) -> None:
    """A command's result: the JSON document with --json, else the text for a person."""
    if getattr(args, "json", False):
        print_json(document)
    else:
        print(text)


def confirm(action: str, yes: bool) -> bool:
    """Whether to `action` ("delete ..."): --yes, or y typed at the terminal. With no terminal to ask on and
    no --yes, a UserError: a script that deletes must say so."""
    if yes:
        return True
    if not sys.stdin.isatty():
        raise UserError(f"will not {action} without confirmation: no terminal to ask on; pass --yes to go ahead")
    print(f"{action[0].upper()}{action[1:]}? [y/N] ", end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def print_counts(counts: dict[str, int], verb: str = "skipped") -> None:
    for reason, count in sorted(counts.items(), key=lambda kv: -kv[1]):
        print(f"  {verb} {count}: {reason}")


def read_query_photo(name: str, policy):
    """A query photo read as ingest reads one (a regular file, within `policy`'s limits), decoded upright RGB,
    and the SHA-256 of its bytes (a photo the gallery holds is recognised). Raises FileSkip or ImageError."""
    from geoloc.ingest.files import read_bounded
    from geoloc.ingest.images import open_image, to_rgb
    from geoloc.ingest.records import sha256_hex

    data = read_bounded(name, policy)
    return to_rgb(open_image(data, policy.max_pixels)), sha256_hex(data)
