"""Helpers shared by the tests: tiny tokenizers, configs, models and inputs, a stand-in text
encoder, and a random Inception file (fixtures live in ``conftest.py``)."""

from __future__ import annotations

import dataclasses

import torch

from fluid.config import get_preset
from fluid.model import Generator


def make_tokenizer(kind: str = "kl", seed: int = 0):
    """A tiny, randomly initialised tokenizer for 32x32 images (16 tokens)."""
    from fluid.config.autoencoder import get_tokenizer_preset
    from fluid.tokenizers.autoencoder import build_autoencoder

    torch.manual_seed(seed)
    return build_autoencoder(get_tokenizer_preset(f"debug-{kind}")).eval()


def tiny_config(variant: str = "continuous-random", **train):
    """The debug generator on 32x32 shapes, no periodic validation unless asked."""

    cfg = get_preset("debug", variant=variant, overrides={"data.resolution": 32})
    cfg.train.val_every = 0
    cfg.train.log_every = 1
    cfg.train.warmup_steps = 5
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


class WordHashEncoder:
    """A stand-in text encoder for tests that need no language model: each word maps to a
    fixed pseudo-random 384-d vector (seeded by a stable hash of the word)."""

    name, dim, max_length = "wordhash", 384, 32

    def identity(self) -> str:
        return "wordhash-1"

    def __call__(self, prompts):
        import zlib

        rows = []
        for p in prompts:
            words = p.split()[: self.max_length]
            rows.append(
                torch.stack(
                    [
                        torch.randn(self.dim, generator=torch.Generator().manual_seed(zlib.crc32(w.encode())))
                        for w in words
                    ]
                )
                if words
                else torch.zeros(0, self.dim)
            )
        length = max(1, max(r.shape[0] for r in rows))
        emb = torch.zeros(len(rows), length, self.dim)
        mask = torch.zeros(len(rows), length, dtype=torch.bool)
        for i, r in enumerate(rows):
            emb[i, : len(r)], mask[i, : len(r)] = r, True
        return emb, mask


def random_inception_file(path, seed: int = 0) -> dict:
    """A random state dict with the keys and shapes of torch-fidelity's own InceptionV3
    module, saved where a user would keep the real weights (FID without a download). The
    module is built on the meta device (no memory, no init) with its weight download stubbed out."""
    from unittest import mock

    from torch_fidelity import feature_extractor_inceptionv3 as fe

    class Blank(fe.FeatureExtractorInceptionV3):
        def load_state_dict(self, *args, **kwargs):  # the real one would need real tensors
            return None

    with mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}), torch.device("meta"):
        model = Blank("inception-v3-compat", ["2048"])
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, v in model.state_dict().items():
        if v.dtype == torch.long:  # num_batches_tracked
            state[k] = torch.zeros(v.shape, dtype=torch.long)
        elif v.dim() > 1:  # conv and fc weights, He-scaled so that the signal survives 90 layers
            state[k] = torch.randn(v.shape, generator=g) * (2.0 / v[0].numel()) ** 0.5
        elif k.endswith(("running_var", "bn.weight")):
            state[k] = torch.ones(v.shape)
        else:  # biases, running means
            state[k] = torch.zeros(v.shape)
    torch.save(state, path)
    return state


def tiny(variant: str, **model) -> Generator:
    cfg = get_preset("debug", variant=variant)
    # Without zero-init the untrained head is not the constant 0, so guidance has an effect.
    cfg.model = dataclasses.replace(cfg.model, **{"zero_init": False, **model})
    torch.manual_seed(0)
    return Generator(cfg.model, cfg.text).eval()


def text_batch(b=3, length=5, dim=384, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(b, length, dim, generator=g)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[1, 3:] = False
    return emb, mask


def tokens_for(model: Generator, b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    if model.continuous:
        return torch.randn(b, model.cfg.num_tokens, model.cfg.token_dim, generator=g)
    return torch.randint(0, model.cfg.vocab_size, (b, model.cfg.num_tokens), generator=g)
