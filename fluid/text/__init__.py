"""Frozen text encoders: the interface and padding (base), MiniLM / T5 / any transformers
encoder (encoders), and cached or precomputed embeddings (cache). The trainable text
aligner is part of the generator: :mod:`fluid.model.aligner`."""
