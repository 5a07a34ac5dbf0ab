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

MOVED: dict[str, str | tuple[str, ...]] = {
    # old path -> new path
    "fluid.data.shapes": ("fluid.shapes.scenes", "fluid.shapes.render", "fluid.shapes.dataset"),
    "fluid.eval.detector": "fluid.shapes.detector",
    "fluid.eval.shape_classifier": "fluid.shapes.classifier",
    "fluid.eval.shape_data": "fluid.shapes.classifier_data",
    "fluid.eval.shapes_eval": "fluid.shapes.evaluation",
    "fluid.eval.shapes_features": "fluid.shapes.features",
    "fluid.eval.validation": "fluid.train.validation",
    "fluid.text.aligner": "fluid.model.aligner",
    "fluid.tokenizers.metrics": "fluid.train.tokenizer_metrics",
    "fluid.tokenizers.train": "fluid.train.tokenizer",
}
"""Every old module path and where its code lives now (a tuple: the modules it was split into)."""


def warn_moved(old: str, new: str | tuple[str, ...]) -> None:
    new = new if isinstance(new, str) else ", ".join(new)
    warnings.warn(f"{old} has moved to {new}; the old path goes away in the next release",
                  DeprecationWarning, stacklevel=3)


def alias(old: str) -> None:
    """Make the module ``old`` (being imported) stand for its new home."""
    new = MOVED[old]
    warn_moved(old, new)
    sys.modules[old] = importlib.import_module(new)


def reexport(old: str, namespace: dict) -> None:
    """Fill the module ``old`` (being imported; ``namespace`` is its ``globals()``) with the
    names of the modules it was split into."""
    warn_moved(old, MOVED[old])
    for new in MOVED[old]:
        namespace.update({k: v for k, v in vars(importlib.import_module(new)).items() if not k.startswith("__")})
