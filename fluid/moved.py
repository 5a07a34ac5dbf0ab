"""Module paths that moved, kept working for one release.

Each old path is a small module that warns (``DeprecationWarning``) and then stands for its
new home: ``import fluid.eval.detector`` gives the module ``fluid.shapes.detector`` itself,
so attributes, private names and monkeypatching behave as before. A module that was split
re-exports the names of its parts instead. Delete the old files and this table in the
next release.
"""

from __future__ import annotations

import importlib
import sys
import warnings

MOVED = {
    # old path -> new path
    "fluid.eval.shapes_eval": "fluid.shapes.evaluation",
    "fluid.eval.shapes_features": "fluid.shapes.features",
    "fluid.eval.shape_data": "fluid.shapes.classifier_data",
    "fluid.eval.shape_classifier": "fluid.shapes.classifier",
    "fluid.eval.detector": "fluid.shapes.detector",
    "fluid.data.shapes": "fluid.shapes.scenes",
    "fluid.tokenizers.train": "fluid.train.tokenizer",
    "fluid.tokenizers.metrics": "fluid.train.tokenizer_metrics",
    "fluid.eval.validation": "fluid.train.validation",
    "fluid.text.aligner": "fluid.model.aligner",
}
"""Every old module path and where its code lives now (docs/architecture.md)."""


def warn_moved(old: str, new: str) -> None:
    warnings.warn(f"{old} has moved to {new}; the old path goes away in the next release",
                  DeprecationWarning, stacklevel=3)


def alias(old: str) -> None:
    """Make the module ``old`` (being imported) stand for its new home."""
    new = MOVED[old]
    warn_moved(old, new)
    sys.modules[old] = importlib.import_module(new)
