"""Split into :mod:`fluid.shapes.scenes`, :mod:`fluid.shapes.render` and
:mod:`fluid.shapes.dataset`; this path keeps working for one release (:mod:`fluid.moved`)."""

from fluid.moved import reexport

reexport(__name__, globals())
