"""`geoloc explain PHOTO`: which parts of a photo its answer rests on (geoloc.explain), as a grid of numbers,
one JSON document, or the photo with the heat map laid over it."""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image, ImageOps

from geoloc.cli.common import UserError, add_command, add_list_option, add_model_options, \
    read_query_photo, result, runtime_from
from geoloc.explain import DEFAULT_GRID, GRID_RANGE

HEAT_OPACITY = 0.5


def grid_size(value: str) -> int:
    low, high = GRID_RANGE
    if not value.isdigit() or not low <= int(value) <= high:
        raise argparse.ArgumentTypeError(f"a whole number from {low} to {high}")
    return int(value)


def heat_map(image: Image.Image, importance: np.ndarray) -> Image.Image:
    """The photo with its importance grid over it: blue where covering changes nothing, red where it matters most."""
    grey = Image.fromarray(np.round(np.clip(importance, 0, 1) * 255).astype(np.uint8), "L")
    heat = ImageOps.colorize(grey.resize(image.size, Image.Resampling.NEAREST), black="blue", mid="yellow",
                             white="red")
    return Image.blend(image.convert("RGB"), heat, HEAT_OPACITY)


def _read(name: str, settings) -> tuple[Image.Image, str]:
    """The photo, decoded, and the SHA-256 of its bytes."""
    from geoloc.ingest.files import FileSkip, ReadPolicy
    from geoloc.ingest.images import ImageError

    try:
        return read_query_photo(name, ReadPolicy.from_settings(settings))
    except (FileSkip, ImageError) as exc:
        raise UserError(f"{name}: cannot use this photo ({exc})") from None


def _text(name: str, document: dict, out: str | None) -> str:
    answer, target = document["answer"], document["target"]
    score = ("the predicted cell's probability" if target == "cell"
             else "the similarity to the reference photos the answer rests on")
    lines = [f"{name}: answer {answer['lat']:.5f}, {answer['lon']:.5f}",
             f"how much covering each part lowers {score} (1 = the most):"]
    lines += ["  " + " ".join(f"{v:4.2f}" for v in row) for row in document["importance"]]
    if out:
        lines.append(f"heat map written to {out}")
    return "\n".join(lines)


def cmd_explain(args) -> int:
    from geoloc.explain import explain
    from geoloc.locate import Locator

    with runtime_from(args) as runtime:
        image, digest = _read(args.photo, runtime.settings)
        locator = Locator(runtime.embedder, runtime.gallery(), k=args.k, collections=args.collections,
                          home=runtime.settings.home)
        locator.check_ready()
        explanation = explain(image, locator, args.grid, digest)
    document = explanation.to_dict()
    if args.out:
        heat_map(image, explanation.importance).save(args.out)
        document["out"] = args.out
    result(args, document, _text(args.photo, document, args.out))
    return 0


def register(sub) -> None:
    p = add_command(sub, "explain", cmd_explain,
                    help="which parts of a photo its answer rests on (occlusion over a grid)")
    p.add_argument("photo", metavar="PHOTO")
    p.add_argument("--grid", type=grid_size, default=DEFAULT_GRID,
                   help=f"rows and columns of the grid ({GRID_RANGE[0]}-{GRID_RANGE[1]}, default {DEFAULT_GRID})")
    p.add_argument("--out", metavar="IMAGE.png", help="write the photo with the heat map over it")
    p.add_argument("-k", type=int, default=10, help="neighbours the answer is built from (default 10)")
    add_list_option(p, "--collections", metavar="NAME", help="search only these collections")
    add_model_options(p)
