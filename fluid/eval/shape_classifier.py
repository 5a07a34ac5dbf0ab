"""Moved to :mod:`fluid.shapes.classifier`; this path keeps working for one release (:mod:`fluid.moved`)."""

if __name__ == "__main__":  # python -m fluid.eval.shape_classifier ...
    from fluid.shapes.train_classifier import main

    raise SystemExit(main())

from fluid.moved import alias  # noqa: E402

alias(__name__)
