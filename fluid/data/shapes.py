"""Moved to :mod:`fluid.shapes.scenes`; this path keeps working for one release (:mod:`fluid.moved`)."""

from fluid.moved import alias

alias(__name__)
