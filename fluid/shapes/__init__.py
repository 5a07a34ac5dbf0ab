"""The built-in ``shapes`` world, in one place: everything that knows what a scene of
coloured shapes is.

    scenes.py            caption grammar (GenEval's six task families), scene specs and layouts
    render.py            draws scenes: signed distance functions, a batch at once
    dataset.py           ShapesDataset: deterministic train/val/test splits
    detector.py          reads shapes back from an image (segmentation + templates); scores a caption
    classifier.py        the learned kind reader the detector uses on decoded images
    classifier_data.py   its training data: renders, blurred renders, tokenizer round trips, blobs
    train_classifier.py  its training (``python -m fluid.shapes.train_classifier``)
    features.py          a small feature network for the Frechet distance on shapes (shapes_fd)
    evaluation.py        ShapesEval, the GenEval-style benchmark of generated images

Generic code plugs it in by name: ``data.source = "shapes"`` (fluid.data), ``fluid eval``
(fluid.eval.run), the tokenizer recipe (fluid.train.tokenizer). Nothing here imports them.
"""
