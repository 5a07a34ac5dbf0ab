"""Moved to :mod:`fluid.shapes.features`; this path keeps working for one release (:mod:`fluid.moved`)."""

if __name__ == "__main__":  # python -m fluid.eval.shapes_features ...
    from fluid.shapes.features import main

    raise SystemExit(main())

from fluid.moved import alias  # noqa: E402

alias(__name__)
