"""One checkpoint, opened once: :meth:`Checkpoint.open` resolves a checkpoint, run or pipeline
folder to its checkpoint folder a single time and hands out what sampling needs from it: the
config, the generator with its weights, the tokenizer (the one bundled beside it in a pipeline
folder, else the config's) and the text encoder.

Also what a pipeline folder's reader needs to know of its layout (``model_index.json`` and one
subfolder per component, :mod:`fluid.sample.folder` writes it)."""

from __future__ import annotations

import dataclasses
import json
from functools import cached_property
from pathlib import Path

from fluid.checkpoint import (
    GENERATOR,
    INDEX,
    CheckpointError,
    is_pipeline_folder,
    load_weights,
    read_config,
    read_meta,
    resolve,
)
from fluid.config import FluidConfig

CLASS_NAME = "FluidPipeline"
TOKENIZER = "tokenizer"


def read_index(folder: str | Path) -> dict:
    path = Path(folder) / INDEX
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from None
    if index.get("_class_name") != CLASS_NAME:
        raise CheckpointError(f"{path} describes a {index.get('_class_name')!r}, not a {CLASS_NAME} folder")
    return index


def bundled_tokenizer(generator_folder: str | Path) -> Path | None:
    """The tokenizer saved beside a pipeline folder's generator, if this is one."""
    top = Path(generator_folder).parent
    if Path(generator_folder).name != GENERATOR or not is_pipeline_folder(top):
        return None
    return top / read_index(top).get("tokenizer", TOKENIZER)


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    folder: Path
    """The checkpoint folder itself (config.json, weights, meta.json)."""
    config: FluidConfig

    @classmethod
    def open(cls, path: str | Path) -> Checkpoint:
        """A checkpoint folder, a run folder (its ``latest``) or a pipeline folder (its
        ``generator``); :class:`~fluid.checkpoint.CheckpointError` says what is wrong."""
        folder = resolve(path)
        return cls(folder, read_config(folder))

    @cached_property
    def meta(self) -> dict:
        return read_meta(self.folder)

    def generator(self, ema: bool = True):
        """The generator built from the config, with the EMA (or raw) weights loaded."""
        from fluid.model import Generator

        model = Generator(self.config.model, self.config.text)
        load_weights(model, self.folder, ema=ema)
        return model

    @property
    def tokenizer_path(self) -> Path | str:
        from fluid.tokenizers.load import resolve_tokenizer

        return bundled_tokenizer(self.folder) or resolve_tokenizer(self.config)

    def tokenizer(self):
        from fluid.tokenizers.load import load_tokenizer

        tok = self.config.tokenizer
        return load_tokenizer(self.tokenizer_path, kind=tok.kind, patch_size=tok.patch_size)

    def distilled_head(self, model):
        """The few-step head ``fluid distill-head`` saved here for ``model`` (this checkpoint's
        generator, loaded), or None (:mod:`fluid.checkpoint`)."""
        from fluid.checkpoint import load_distilled_head

        return load_distilled_head(self.folder, model.head) if model.continuous else None

    def text_encoder(self, device: str = "cpu"):
        from fluid.text.encoders import build_text_encoder

        return build_text_encoder(self.config.text, device=device)
