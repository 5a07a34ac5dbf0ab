"""Frozen text encoders: MiniLM offline, T5 loading code on a tiny random model, caching and
precomputed embeddings."""

import os
import re
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a hub

import pytest
import torch

from fluid.config import ConfigError, TextConfig
from fluid.text.base import PromptTruncatedWarning, UnknownCaptionError
from fluid.text.cache import CachedTextEncoder, PrecomputedTextEncoder, load_embeddings, save_embeddings
from fluid.text.encoders import MiniLMEncoder, T5Encoder, build_text_encoder

PROMPTS = ["a red circle", "a photo of two blue squares to the left of a green triangle", ""]
LONG = " ".join(["a small red circle above a big blue square"] * 10)  # ~90 tokens
WORDS = "a an the photo of red green blue circle square triangle two three left right above below to".split()


@pytest.fixture(scope="module")
def minilm():
    return build_text_encoder(TextConfig(encoder="minilm", max_length=32, dim=384))


def _tiny_t5_folder(folder, seed=0):
    """A randomly initialised 2-layer T5 encoder and a tiny Unigram (SentencePiece-style) tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    # T5's layout: <pad>=0, </s>=1, <unk>=2, then pieces; "▁" marks a word start.
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [("▁" + w, -3.0) for w in WORDS] + [(c, -6.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    tk = Tokenizer(models.Unigram(vocab, unk_id=2))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tk.post_processor = processors.TemplateProcessing(single=["$A", "</s>"], special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    tokenizer.save_pretrained(folder)
    config = T5Config(
        vocab_size=len(vocab),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        feed_forward_proj="gated-gelu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    torch.manual_seed(seed)
    T5EncoderModel(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory):
    return _tiny_t5_folder(tmp_path_factory.mktemp("t5"))


# ----------------------------------------------------------------------------- MiniLM


def test_minilm_shapes_masks_and_frozen(minilm):
    assert isinstance(minilm, MiniLMEncoder) and minilm.dim == 384 and minilm.max_length == 32
    emb, mask = minilm(PROMPTS)
    lengths = [len(x) for x in minilm.tokenize(PROMPTS)]
    assert lengths[0] == 5  # [CLS] a red circle [SEP]
    assert emb.dtype == torch.float32 and mask.dtype == torch.bool
    assert emb.shape == (3, max(lengths), 384) and mask.shape == (3, max(lengths))
    assert mask.sum(1).tolist() == lengths and lengths[2] == 0
    assert (emb[~mask] == 0).all()  # padding is zero
    assert emb[mask].abs().sum(-1).min() > 0
    assert not minilm.model.training and minilm.model.dtype == torch.float32
    assert not any(p.requires_grad for p in minilm.model.parameters())
    assert not emb.requires_grad


def test_same_prompt_same_embedding_whatever_the_batch(minilm):
    alone, mask_alone = minilm(["a red circle"])
    with pytest.warns(PromptTruncatedWarning):
        crowd, mask_crowd = minilm([PROMPTS[1], "a red circle", LONG[:200], ""])
    n = int(mask_alone[0].sum())
    assert int(mask_crowd[1].sum()) == n and crowd.shape[1] > n  # padded in the crowd
    assert torch.equal(crowd[1, :n], alone[0, :n])
    assert (crowd[1, n:] == 0).all()


def _same_rows(encoder, captions) -> bool:
    alone = [encoder.rows([c])[0] for c in captions]
    return all(
        torch.equal(row, alone[captions.index(c)])
        for batch in (captions, captions[::-1], captions[3:11] + [PROMPTS[1]])
        for c, row in zip(batch, encoder.rows(batch))
        if c in captions
    )


def test_embeddings_are_bit_identical_in_any_batch_on_one_thread(minilm):
    # Exact, not close: sampling an image alone or in a batch must see the same text.
    from fluid.shapes.scenes import all_captions

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert _same_rows(minilm, all_captions()[::9][:40])
    finally:
        torch.set_num_threads(threads)


def test_cached_embeddings_do_not_depend_on_the_first_batch(minilm):
    # With the suite's threads: a cache keeps the embedding of the batch a caption first came
    # in, so a resumed run (empty cache) would train on other numbers unless they all agree.
    from fluid.shapes.scenes import all_captions

    captions = all_captions()[::9][:40]
    first, second = CachedTextEncoder(minilm), CachedTextEncoder(minilm)
    for c in captions:
        first([c])
    second(captions[::-1][:20])
    second(captions)
    assert all(torch.equal(first._rows[c], second._rows[c]) for c in captions)


def test_empty_and_whitespace_prompts_are_unconditional(minilm):
    emb, mask = minilm(["", "   \n\t"])
    assert emb.shape == (2, 1, 384) and not mask.any() and (emb == 0).all()
    emb, mask = minilm(["a blue square", " "])
    assert mask[0].all() and not mask[1].any()


def test_long_prompt_truncated_with_one_warning(minilm):
    prompt = LONG + " unique-tail"
    with pytest.warns(PromptTruncatedWarning, match=r"truncated to 32 tokens") as record:
        emb, mask = minilm([prompt, "a red circle"])
    assert "a small red circle" in str(record[0].message)  # names the prompt, shortened
    assert emb.shape[1] == 32 and mask[0].sum() == 32
    assert minilm.tokenize([prompt])[0][-1] == minilm.tokenizer.sep_token_id  # closing token kept
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        minilm([prompt])
    assert not [w for w in again if issubclass(w.category, PromptTruncatedWarning)]


def test_truncation_warning_points_at_the_callers_line_and_reads_plainly(minilm):
    from fluid.cli import _plain_warnings

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        CachedTextEncoder(minilm)([LONG + " another tail"])
    (w,) = [w for w in record if issubclass(w.category, PromptTruncatedWarning)]
    assert w.filename == __file__  # this line, not a line inside fluid or transformers
    _plain_warnings()
    text = warnings.formatwarning(w.message, w.category, w.filename, w.lineno)
    assert text.startswith("warning: prompt ") and text.count("\n") == 1


def test_bad_input_is_a_type_error(minilm):
    with pytest.raises(TypeError, match="single string"):
        minilm("a red circle")
    with pytest.raises(TypeError, match="prompt 1 is a int"):
        minilm(["a red circle", 3])


def test_identity_is_stable(minilm):
    first = minilm.identity()
    assert re.fullmatch(r"minilm-[0-9a-f]{12}", first)
    minilm._identity = None  # recompute from the weights
    assert minilm.identity() == first


# ----------------------------------------------------------------------------- cache and precomputed


def test_cache_returns_what_the_encoder_returns(minilm):
    cached = CachedTextEncoder(minilm, max_items=3)
    prompts = ["a red circle", "a blue square", "a red circle", "", "two green triangles"]
    emb, mask = cached(prompts)
    ref, ref_mask = minilm(prompts)
    assert torch.equal(mask, ref_mask)
    torch.testing.assert_close(emb, ref, atol=1e-5, rtol=1e-5)
    assert cached.misses == 4 and cached.hits == 1 and len(cached) == 3  # bounded
    assert "a red circle" not in cached._rows  # least recently used, evicted
    emb2, _ = cached(["two green triangles", "a blue square"])  # hits: the encoder does not run
    assert cached.hits == 3 and cached.misses == 4
    n = int(ref_mask[4].sum())
    torch.testing.assert_close(emb2[0, :n], ref[4, :n], atol=1e-5, rtol=1e-5)
    assert cached.identity() == minilm.identity()


def test_save_load_embeddings_round_trip(minilm, tmp_path):
    captions = ["a red circle", "a photo of two blue squares", "a red circle", ""]
    path = save_embeddings(minilm, captions, tmp_path / "emb.safetensors", batch_size=2)
    table, meta = load_embeddings(path)
    assert meta["identity"] == minilm.identity() and meta["max_length"] == 32 and meta["dim"] == 384
    assert list(table) == ["a red circle", "a photo of two blue squares", ""]  # distinct, in order
    for caption, row in zip(table, minilm.rows(list(table))):
        assert table[caption].dtype == torch.float32
        torch.testing.assert_close(table[caption], row, atol=2e-2, rtol=2e-3)  # stored as fp16

    pre = PrecomputedTextEncoder(path)
    assert pre.identity() == minilm.identity() and pre.dim == 384
    emb, mask = pre(["a photo of two blue squares", "a red circle", "  "])
    ref, ref_mask = minilm(["a photo of two blue squares", "a red circle", "  "])
    assert torch.equal(mask, ref_mask)
    torch.testing.assert_close(emb, ref, atol=2e-2, rtol=2e-3)
    with pytest.raises(UnknownCaptionError, match="not in the precomputed") as err:
        pre(["a yellow star"])
    assert isinstance(err.value, KeyError)
    live = PrecomputedTextEncoder(path, fallback=minilm)
    torch.testing.assert_close(live(["a yellow star"])[0], minilm(["a yellow star"])[0])

    # Exact storage, and the config route: text.encoder = the file.
    exact = save_embeddings(minilm, ["a red circle"], tmp_path / "exact.safetensors", dtype=torch.float32)
    served = build_text_encoder(TextConfig(encoder=str(exact), max_length=32, dim=384))
    assert torch.equal(served(["a red circle"])[0], minilm(["a red circle"])[0])
    with pytest.raises(ConfigError, match="text.max_length=32"):
        build_text_encoder(TextConfig(encoder=str(exact), max_length=16, dim=384))


# ----------------------------------------------------------------------------- T5 and the factory


def test_t5_loads_through_the_factory(t5_folder):
    enc = build_text_encoder(TextConfig(encoder="t5", name_or_path=t5_folder, max_length=8, dim=32))
    assert isinstance(enc, T5Encoder) and enc.dim == 32
    with pytest.warns(PromptTruncatedWarning, match="9 encoder tokens"):
        emb, mask = enc(["a red circle", "two blue squares above the green triangle", ""])
    assert emb.shape == (3, 8, 32) and mask.sum(1).tolist() == [4, 8, 0]
    assert enc.tokenize(["a red circle"])[0] == [4, 9, 12, 1]  # pieces then </s>, no BOS
    assert (emb[~mask] == 0).all()
    # The folder itself as text.encoder is recognised as a T5 model.
    same = build_text_encoder(TextConfig(encoder=t5_folder, max_length=8, dim=32))
    assert isinstance(same, T5Encoder) and same.identity() == enc.identity()
    torch.testing.assert_close(same(["a red circle"])[0], emb[:1, :4])


def test_identity_changes_with_the_weights(t5_folder, tmp_path):
    other = _tiny_t5_folder(tmp_path / "other", seed=1)
    a = build_text_encoder(TextConfig(encoder="t5", name_or_path=t5_folder, max_length=8, dim=32))
    b = build_text_encoder(TextConfig(encoder="t5", name_or_path=other, max_length=8, dim=32))
    assert a.identity().startswith("t5-") and a.identity() != b.identity()


def test_factory_errors(t5_folder, tmp_path):
    with pytest.raises(ConfigError, match=r"text.dim=32"):
        build_text_encoder(TextConfig(encoder="t5", name_or_path=t5_folder, dim=384))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_text_encoder(TextConfig(encoder=str(tmp_path / "missing"), dim=32))
