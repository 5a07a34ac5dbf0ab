"""Moved to :mod:`fluid.shapes.detector`; this path keeps working for one release (:mod:`fluid.moved`)."""

from fluid.moved import alias

alias(__name__)
