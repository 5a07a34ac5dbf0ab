"""``fluid serve``: the interactive web page, over the shipped models or given folders."""

from __future__ import annotations

import sys
from pathlib import Path

from fluid.commands._common import pick_device, set_threads
from fluid.config import VARIANTS


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="the interactive web page: type a prompt, watch the image form")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument(
        "--variants", nargs="+", default=None, choices=VARIANTS, help="shipped models to serve (default: all four)"
    )
    p.add_argument(
        "--checkpoint",
        action="append",
        metavar="[NAME=]PATH",
        help="serve this pipeline, checkpoint or run folder (or hub id) instead (repeatable)",
    )
    p.add_argument("--max-queue", type=int, default=100, help="requests that may wait; more are refused with a message")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (0: PyTorch's default)")
    p.set_defaults(func=run)


def served_models(args) -> dict[str, str | None]:
    """Name -> source for ``fluid serve``: the shipped variants, or the given folders (named
    ``NAME=PATH``, or by their variant), or both when both are asked for."""
    from fluid.checkpoint import read_config

    sources: dict[str, str | None] = {}
    if args.variants or not args.checkpoint:
        sources.update({v: None for v in args.variants or VARIANTS})
    for item in args.checkpoint or []:
        name, sep, path = item.partition("=")
        if not sep:
            path = item
            from fluid.sample.folder import resolve_source

            name = read_config(resolve_source(path)).model.variant
            if name in sources:
                name = Path(path).name
        if name in sources:
            raise ValueError(f"two served models are named {name!r}: name them with --checkpoint NAME=PATH")
        sources[name] = path
    return sources


def run(args) -> int:
    import logging

    from fluid.serve.app import create_app, is_loopback, serve
    from fluid.serve.worker import ModelSet

    set_threads(args.threads)
    logging.basicConfig(format="fluid serve: %(message)s")
    logging.getLogger("fluid.serve").setLevel(logging.INFO)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per model load is noise in a server's log
    models = ModelSet(served_models(args), device=pick_device(args.device))
    app = create_app(models, max_pending=args.max_queue)
    if not is_loopback(args.host):
        print(
            f"fluid serve: warning: listening on {args.host}, not on this machine alone: anyone who can reach "
            f"it on port {args.port} can use the page and its CPU/GPU (no login, no TLS). Use the default "
            "--host 127.0.0.1 unless you mean that.",
            file=sys.stderr,
        )
    shown = "localhost" if args.host in ("127.0.0.1", "::1") else args.host
    print(
        f"fluid serve: http://{shown}:{args.port}/  ({', '.join(models)}; models load in the background; Ctrl-C stops)",
        file=sys.stderr,
        flush=True,
    )
    serve(app, host=args.host, port=args.port)
    return 0
