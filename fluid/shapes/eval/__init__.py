"""The evaluation apparatus of the ``shapes`` world: what reads a generated image back.

    detector.py          reads shapes back from an image (segmentation + templates); scores a caption
    classifier.py        the learned kind reader the detector uses on decoded images
    classifier_data.py   its training data: renders, blurred renders, tokenizer round trips, blobs
    train_classifier.py  its training (``python -m fluid.shapes.eval.train_classifier``)
    features.py          a small feature network for the Frechet distance on shapes (shapes_fd)
    evaluation.py        ShapesEval, the GenEval-style benchmark of generated images

It sits one layer above the world (:mod:`fluid.shapes`: scenes, renderer, dataset), which
never imports it; it may use the frozen tokenizers (round trips for the classifier's data).
"""
