"""Transformer blocks, the generator for all four variants, its heads, orders and masks."""

from fluid.model.generator import Generator

__all__ = ["Generator"]
