"""Moved to :mod:`fluid.train.validation`; this path keeps working for one release (:mod:`fluid.moved`)."""

from fluid.moved import alias

alias(__name__)
