"""The built-in ``shapes`` world, in one place: everything that knows what a scene of
coloured shapes is.

    scenes.py            caption grammar (GenEval's six task families), scene specs and layouts
    render.py            draws scenes: signed distance functions, a batch at once
    dataset.py           ShapesDataset: deterministic train/val/test splits
    digest.py            a hash of the three files above (keys of caches built from rendered data)
    eval/                reading the world back: the detector, its classifier, shapes_fd, ShapesEval

Generic code plugs it in by name: ``data.source = "shapes"`` (fluid.data), ``fluid eval``
(fluid.eval.run), the tokenizer recipe (fluid.train.tokenizer). Nothing here imports them.
"""
