"""The scaling study: sweeps of sizes x variants (x steps), their compute, fits and figures.

``fluid scale --sweep NAME_OR_FILE --out DIR`` runs a sweep (``sweep.py``, ``runner.py``);
``compute.py`` counts parameters and training FLOPs.
"""
