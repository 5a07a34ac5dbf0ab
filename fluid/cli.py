"""``fluid <command>``: the command line. The only module that sees every part.

It builds the parser from the command modules in :mod:`fluid.commands` (one per command:
its flags in ``add_parser``, its work in ``run``) and dispatches to them. What happens
before any command runs (no model hub unless asked, plain warnings, ``bench``'s arguments
handed over unparsed, ``scale``'s ``--out`` check) and how errors become exit codes live
here. Adding a command is a module in ``fluid/commands/`` and its place in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

# Nothing we run may reach a model hub unless the user opts in (FLUID_ONLINE=1).
if os.environ.get("FLUID_ONLINE") != "1":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from fluid.checkpoint import CheckpointError  # noqa: E402
from fluid.commands import (
    bench,
    demo,
    distill_head,
    embed_captions,
    export,
    prepare,
    presets,
    sample,
    save_pretrained,  # noqa: E402
    scale,
    serve,
    train,
    train_tokenizer,
)
from fluid.commands import eval as evaluate  # noqa: E402
from fluid.config import ConfigError  # noqa: E402

# In the order `fluid --help` lists them.
COMMANDS = (
    demo,
    serve,
    save_pretrained,
    train,
    sample,
    train_tokenizer,
    distill_head,
    export,
    embed_captions,
    evaluate,
    prepare,
    scale,
    presets,
    bench,
)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fluid", description="Autoregressive text-to-image generation with continuous tokens"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def _plain_warnings() -> None:
    """Our warnings as one line for the person at the terminal; Python's default format adds the
    source line that issued the warning, which means nothing to them."""
    default = warnings.formatwarning

    def formatwarning(message, category, filename, lineno, line=None):
        if category.__module__.startswith("fluid."):
            return f"warning: {message}\n"
        return default(message, category, filename, lineno, line)

    warnings.formatwarning = formatwarning


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        return bench.run(argv[1:])
    args = make_parser().parse_args(argv)
    if args.command == "scale" and not args.list and not args.out:
        print("fluid scale: --out is required (unless --list)", file=sys.stderr)
        return 2
    _plain_warnings()
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"fluid {args.command}: configuration error: {e}", file=sys.stderr)
        return 2
    except (CheckpointError, OSError, ValueError) as e:
        print(f"fluid {args.command}: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        from fluid.train.distributed import CollectiveTimeout
        from fluid.train.trainer import NonFiniteError

        if isinstance(e, CollectiveTimeout):
            # A process group with a collective still pending cannot be torn down (the
            # backend aborts in its destructor, hiding this message): say why, then leave.
            print(f"fluid {args.command}: error: {e}", file=sys.stderr)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(4)

        if not isinstance(e, NonFiniteError):
            raise
        print(f"fluid {args.command}: error: {e}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
