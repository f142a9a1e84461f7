"""`geoloc encoders`: the image encoders, their dimension, whether their weights are here and how to get them;
`geoloc weights fetch`: the one command that downloads weights, for those who can reach the hub."""

from __future__ import annotations

from geoloc.cli.common import add_command, add_encoder_options, add_group, print_json, result, settings_from


def cmd_encoders(args) -> int:
    from geoloc.models.encoders import describe_encoders

    settings = settings_from(args)
    rows = describe_encoders(settings.backbone, settings.checkpoint)
    if args.json:
        print_json({"selected": settings.backbone, "encoders": [row.to_dict() for row in rows]})
        return 0
    width = max(len(row.name) for row in rows)
    print(f"  {'encoder':<{width}}  {'dim':>5}  weights")
    for row in rows:
        mark = "*" if row.selected else " "
        dim = "?" if row.dim is None else str(row.dim)
        print(f"{mark} {row.name:<{width}}  {dim:>5}  {'present' if row.present else 'absent ':<7}  {row.summary}")
        if not row.present:
            print(f"  {'':<{width}}  {'':>5}  get them: {row.how}")
    print("* selected (--backbone/--checkpoint, or GEOLOC_BACKBONE/GEOLOC_CHECKPOINT)")
    return 0


def cmd_fetch(args) -> int:
    from geoloc.models.encoders import fetch_weights

    message = fetch_weights(args.name)
    result(args, {"encoder": args.name, "message": message}, message)
    return 0


def register(sub) -> None:
    p = add_command(sub, "encoders", cmd_encoders,
                    help="image encoders: dimension, whether their weights are here, how to get them")
    add_encoder_options(p)

    verbs = add_group(sub, "weights", help="get an encoder's weights")
    fetch = add_command(verbs, "fetch", cmd_fetch,
                        help="download an encoder's weights into the Hugging Face cache (needs the hub)")
    fetch.add_argument("name", help="a name from `geoloc encoders`, or hf-hub:ORG/REPO (an open_clip repository)")
