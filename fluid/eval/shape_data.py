"""Moved to :mod:`fluid.shapes.classifier_data`; this path keeps working for one release (:mod:`fluid.moved`)."""

from fluid.moved import alias

alias(__name__)
