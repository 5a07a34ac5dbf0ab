"""The built-in ``shapes`` world, in one place: everything that knows what a scene of
coloured shapes is.

    scenes.py           caption grammar (GenEval's six task families), scene layouts, renderer, ShapesDataset
    detector.py         reads shapes back from an image (segmentation + templates), and scores a caption
    classifier.py       the learned kind reader the detector can use on decoded images
    classifier_data.py  its training data: renders, blurred renders, tokenizer round trips, blobs
    features.py         a small feature network for the Frechet distance on shapes (shapes_fd)
    evaluation.py       ShapesEval, the GenEval-style benchmark of generated images

Generic code plugs it in by name: ``data.source = "shapes"`` (fluid.data), ``fluid eval``
(fluid.eval.run), the tokenizer recipe (fluid.train.tokenizer). Nothing here imports them.
"""
