"""``fluid <command>``, one module per command: each registers its subparser and its flags
(``add_parser(sub)``, which sets ``func=run``) and does the work (``run(args) -> int``).

A command imports what it runs inside ``run``, so building the parser (``fluid --help``)
loads nothing heavy; the work itself lives in the packages below. :mod:`fluid.cli` builds
the parser from these modules and dispatches. Adding a command is a module here and its
line in ``fluid/cli.py``.
"""
