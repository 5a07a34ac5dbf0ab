"""Image tokenizers: patchify, our KL / VQ autoencoders, saving/loading, training, and the
diffusers adapters (on tiny randomly initialised models saved to a temp folder)."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from safetensors.torch import load_file, save_file

from fluid.config import TokenType
from fluid.config.autoencoder import TOKENIZER_PRESETS, AutoencoderConfig, get_tokenizer_preset
from fluid.tokenizers import load_tokenizer, patchify, unpatchify
from fluid.tokenizers.adapters import DiffusersKLTokenizer, DiffusersVQTokenizer
from fluid.tokenizers.autoencoder import build_autoencoder
from fluid.tokenizers.half import halve
from fluid.tokenizers.quantizer import VectorQuantizer
from fluid.train.tokenizer import compute_scale_shift, train_tokenizer


class Rects:
    """A tiny stand-in dataset: one coloured axis-aligned rectangle on grey, deterministic by index."""

    def __init__(self, resolution=32, size=10_000):
        self.resolution, self.size = resolution, size

    def __len__(self):
        return self.size

    def batch(self, indices, device="cpu"):
        r = self.resolution
        out = []
        for i in indices:
            g = torch.Generator().manual_seed(int(i))
            img = torch.full((3, r, r), -0.2)
            x0, y0 = torch.randint(0, r // 2, (2,), generator=g).tolist()
            w, h = torch.randint(r // 4, r // 2, (2,), generator=g).tolist()
            img[:, y0 : y0 + h, x0 : x0 + w] = torch.rand(3, 1, 1, generator=g) * 2 - 1
            out.append(img)
        return torch.stack(out).to(device), ["a rectangle"] * len(indices)


def images(n=2, res=32, seed=0):
    return torch.rand(n, 3, res, res, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def debug(kind):
    torch.manual_seed(0)
    return build_autoencoder(get_tokenizer_preset(f"debug-{kind}")).eval()


# ----------------------------------------------------------------------------- patchify


@pytest.mark.parametrize("p,c,h,w", [(1, 4, 4, 4), (2, 4, 8, 8), (4, 3, 8, 12), (2, 1, 6, 2)])
def test_patchify_unpatchify_inverse(p, c, h, w):
    z = torch.randn(3, c, h, w)
    t = patchify(z, p)
    assert t.shape == (3, (h // p) * (w // p), c * p * p)
    assert torch.equal(unpatchify(t, p, h, w), z)
    t2 = torch.randn_like(t)
    assert torch.equal(patchify(unpatchify(t2, p, h, w), p), t2)


def test_patchify_raster_order_and_channel_layout():
    z = torch.arange(2 * 2 * 4 * 6, dtype=torch.float32).reshape(2, 2, 4, 6)  # (B, C, h, w)
    t = patchify(z, 2)  # grid 2 x 3
    assert torch.equal(t[:, 0], z[:, :, 0:2, 0:2].reshape(2, -1))  # top-left patch, (C, p, p) order
    assert torch.equal(t[:, 1], z[:, :, 0:2, 2:4].reshape(2, -1))  # then to the right
    assert torch.equal(t[:, 3], z[:, :, 2:4, 0:2].reshape(2, -1))  # next row
    with pytest.raises(ValueError):
        patchify(torch.randn(1, 4, 5, 4), 2)
    with pytest.raises(ValueError):
        unpatchify(torch.randn(1, 5, 16), 2, 4, 4)


# ----------------------------------------------------------------------------- presets and shapes


@pytest.mark.parametrize("name", list(TOKENIZER_PRESETS))
def test_preset_encode_decode_shapes(name):
    cfg = get_tokenizer_preset(name)
    torch.manual_seed(0)
    tok = build_autoencoder(cfg).eval()
    x = images(2, cfg.resolution)
    t = tok.encode(x, generator=torch.Generator().manual_seed(0))
    n = tok.num_tokens(cfg.resolution)
    assert n == cfg.num_tokens() == 16  # every shipped preset: 16 tokens at its resolution
    if cfg.kind.value == "kl":
        assert tok.token_type == TokenType.CONTINUOUS and tok.vocab_size == 0
        assert t.shape == (2, n, tok.token_dim) and t.dtype == torch.float32
    else:
        assert tok.token_type == TokenType.DISCRETE and tok.vocab_size == cfg.codebook_size
        assert t.shape == (2, n) and t.dtype == torch.long
        assert 0 <= int(t.min()) and int(t.max()) < tok.vocab_size
    y = tok.decode(t)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert y.min() >= -1 and y.max() <= 1


def test_preset_geometry_and_errors():
    assert get_tokenizer_preset("shapes-kl-f8").token_dim == 16
    assert get_tokenizer_preset("shapes-kl-f4").token_dim == 64
    assert get_tokenizer_preset("shapes-vq-f16").downsample == 16
    with pytest.raises(ValueError, match="unknown tokenizer preset"):
        get_tokenizer_preset("nope")
    with pytest.raises(ValueError, match="patch_size must be 1"):
        AutoencoderConfig(kind="vq", patch_size=2)
    with pytest.raises(ValueError, match="norm_groups"):
        AutoencoderConfig(base_channels=20)
    with pytest.raises(ValueError, match="unknown autoencoder config key"):
        AutoencoderConfig.from_dict({"widht": 3})
    cfg = get_tokenizer_preset("shapes-vq-f16", codebook_size=512)
    assert AutoencoderConfig.from_dict(cfg.to_dict()) == cfg


def test_bad_inputs_raise():
    kl, vq = debug("kl"), debug("vq")
    with pytest.raises(ValueError, match="multiple of"):
        kl.encode(images(1, 30))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        kl.encode(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="tokens must be"):
        kl.decode(torch.zeros(1, 16, 7))
    with pytest.raises(ValueError, match="must lie in"):
        vq.decode(torch.full((1, 16), 64))
    with pytest.raises(ValueError, match="square"):
        vq.decode(torch.zeros(1, 15, dtype=torch.long))


# ----------------------------------------------------------------------------- KL posterior


def test_kl_sampling_reproducible_and_mean_deterministic():
    kl = debug("kl")
    x = images(2)
    a = kl.encode(x, generator=torch.Generator().manual_seed(1))
    b = kl.encode(x, generator=torch.Generator().manual_seed(1))
    c = kl.encode(x, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    m1, m2 = kl.encode(x, sample=False), kl.encode(x, sample=False)
    assert torch.equal(m1, m2)
    mean, _ = kl.posterior(x)
    assert torch.allclose(m1, patchify((mean - kl.cfg.shift) * kl.cfg.scale, 2))


def test_kl_scale_shift_normalises_tokens():
    kl = debug("kl")
    data = Rects()
    shift, scale = compute_scale_shift(kl, data, n=64, batch_size=32)
    kl.cfg = kl.cfg.replace(scale=scale, shift=shift)
    x, _ = data.batch(range(64))
    t = kl.encode(x, generator=torch.Generator().manual_seed(0))
    assert abs(t.mean().item()) < 0.2 and abs(t.std().item() - 1) < 0.2
    assert torch.allclose(kl.decode(t), kl.decoder(unpatchify(t, 2, 8, 8) / scale + shift).clamp(-1, 1), atol=1e-5)


# ----------------------------------------------------------------------------- saving / loading


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_save_load_identical(tmp_path, kind):
    tok = debug(kind)
    tok.cfg = tok.cfg.replace(scale=0.7, shift=0.1)
    tok.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_tokenizer(tmp_path)
    assert type(loaded) is type(tok) and loaded.cfg == tok.cfg
    assert loaded.identity() == tok.identity()
    x = images(2)
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    ta, tb = tok.encode(x, generator=g()), loaded.encode(x, generator=g())
    assert torch.equal(ta, tb)
    assert torch.equal(tok.decode(ta), loaded.decode(tb))


def test_load_fp16_weights(tmp_path):
    tok = debug("kl")
    tok.save(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    save_file({k: v.half() for k, v in state.items()}, tmp_path / "model.safetensors")  # a shipped, halved folder
    loaded = load_tokenizer(tmp_path)
    assert next(loaded.parameters()).dtype == torch.float32
    x = images(2)
    assert torch.allclose(
        loaded.decode(loaded.encode(x, sample=False)), tok.decode(tok.encode(x, sample=False)), atol=2e-2
    )


def test_halving_names_the_fp16_identity_in_eval_json(tmp_path):
    tok = debug("vq")
    tok.save(tmp_path)
    trained = load_tokenizer(tmp_path).identity()
    (tmp_path / "eval.json").write_text(json.dumps({"tokenizer": trained, "psnr": 30.0}))
    identity = halve(tmp_path)
    assert load_file(tmp_path / "model.safetensors")["quantizer.codebook"].dtype == torch.float16
    report = json.loads((tmp_path / "eval.json").read_text())
    assert identity != trained and report["tokenizer"] == identity == load_tokenizer(tmp_path).identity()
    assert report["trained_identity"] == trained and report["psnr"] == 30.0
    assert halve(tmp_path) == identity  # halving again changes nothing
    assert json.loads((tmp_path / "eval.json").read_text())["trained_identity"] == trained


def test_identity_changes_with_weights():
    tok = debug("kl")
    before = tok.identity()
    assert before.startswith("fluid-kl-f4:")
    with torch.no_grad():
        tok.decoder.conv_out.bias.add_(1e-3)
    after = tok.identity()
    assert after != before
    tok.cfg = tok.cfg.replace(scale=2.0)  # other tokens from the same weights
    assert tok.identity() != after


def test_load_errors(tmp_path):
    tok = debug("kl")
    folder = tmp_path / "tok"
    tok.save(folder)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        load_tokenizer(folder, kind="onnx")

    # Weights that do not fit the config: a wider model's config.
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "base_channels": 32}))
    with pytest.raises(ValueError, match=rf"{folder}.*does not match config.json.*shape"):
        load_tokenizer(folder)
    (folder / "config.json").write_text(json.dumps(cfg))

    # A missing tensor.
    state = load_file(folder / "model.safetensors")
    state.pop("decoder.conv_out.bias")
    save_file(state, folder / "model.safetensors")
    with pytest.raises(ValueError, match=rf"{folder}.*missing 1 tensor"):
        load_tokenizer(folder)

    # Missing / corrupt files.
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot read model.safetensors"):
        load_tokenizer(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=rf"{folder}.*missing model.safetensors"):
        load_tokenizer(folder)
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=rf"{folder}.*missing config.json"):
        load_tokenizer(folder, kind="fluid")
    (folder / "config.json").write_text(json.dumps({"something": 1}))
    with pytest.raises(ValueError, match="neither a Fluid tokenizer"):
        load_tokenizer(folder)


# ----------------------------------------------------------------------------- VQ


def test_vq_straight_through_gradient_reaches_encoder():
    vq = debug("vq").train()
    out = vq(images(2))
    out.recon.pow(2).mean().backward()  # a decoder-side loss only, no codebook/commitment terms
    grads = [p.grad for p in vq.encoder.parameters()]
    assert all(gr is not None for gr in grads)
    assert sum(gr.abs().sum().item() for gr in grads) > 0
    assert vq.quantizer.codebook.grad is None  # the codebook learns only from its own loss


def test_quantizer_is_nearest_neighbour():
    q = VectorQuantizer(32, 4).eval()
    z = torch.randn(2, 4, 3, 3)
    out = q(z)
    flat = torch.nn.functional.normalize(z.permute(0, 2, 3, 1).reshape(-1, 4), dim=-1)
    brute = torch.cdist(flat, q.codes()).argmin(-1)  # independent: l2 distance on the sphere
    assert torch.equal(out.indices.flatten(), brute)
    assert torch.allclose(out.z_q, q.lookup(out.indices, 3, 3))
    assert torch.allclose(out.perplexity, out.perplexity.clamp(1, 18))


def test_dead_code_restart_revives_unused_codes():
    torch.manual_seed(0)
    q = VectorQuantizer(16, 4, dead_code_steps=3).train()
    with torch.no_grad():
        q.codebook[1:] = -q.codebook[0]  # all codes but 0 point away from the data
    z = q.codebook[0].detach().reshape(1, 4, 1, 1) + 0.05 * torch.randn(8, 4, 4, 4)  # near code 0
    for _ in range(3):
        out = q(z)
    assert out.indices.unique().tolist() == [0]
    assert q.usage() == pytest.approx(1 / 16)
    revived = q.restart_dead_codes(out.z, torch.Generator().manual_seed(0))
    assert revived == 15 and q.usage() == 1.0
    assert len(q(z).indices.unique()) > 4  # the revived codes now share the data


def test_vq_usage_not_tracked_by_encode():
    vq = debug("vq").train()
    vq.encode(images(2))
    assert int(vq.quantizer.steps_unused.max()) == 0
    vq(images(2))
    assert int(vq.quantizer.steps_unused.max()) == 1


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_short_training_lowers_reconstruction_loss(tmp_path, kind):
    cfg = get_tokenizer_preset(f"debug-{kind}")
    res = train_tokenizer(
        cfg,
        tmp_path,
        steps=40,
        batch_size=16,
        lr=2e-3,
        dataset=Rects(),
        val_dataset=Rects(),
        warmup_steps=5,
        log_every=10,
        save_every=20,
        scale_images=64,
        val_images=32,
        progress=False,
    )
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30, 40]
    assert rows[-1]["recon"] < 0.7 * rows[0]["recon"]
    for name in ["config.json", "model.safetensors", "eval.json", "recon.png"]:
        assert (tmp_path / name).is_file()
    assert json.loads((tmp_path / "eval.json").read_text())["psnr"] == pytest.approx(res["psnr"])
    tok = load_tokenizer(tmp_path)
    if kind == "kl":
        assert tok.cfg.scale != 1.0 and res["token_std"] == pytest.approx(1.0, abs=0.3)
    else:
        assert 0 < res["val_code_usage"] <= 1 and "perplexity" in rows[-1]


def test_training_is_reproducible(tmp_path):
    cfg = get_tokenizer_preset("debug-vq")
    kw = dict(steps=4, batch_size=4, dataset=Rects(), val_dataset=Rects(), scale_images=8, val_images=8, progress=False)
    a = train_tokenizer(cfg, tmp_path / "a", **kw)
    b = train_tokenizer(cfg, tmp_path / "b", **kw)
    assert a["tokenizer"] == b["tokenizer"]


# ----------------------------------------------------------------------------- diffusers adapters


def _tiny_diffusers_kl(folder, **extra):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        scaling_factor=0.5,
        **extra,
    )
    vae.save_pretrained(folder, safe_serialization=True)
    return vae


def test_diffusers_kl_adapter(tmp_path):
    vae = _tiny_diffusers_kl(tmp_path / "vae", shift_factor=0.1)
    tok = load_tokenizer(tmp_path / "vae")
    assert isinstance(tok, DiffusersKLTokenizer) and tok.token_type == TokenType.CONTINUOUS
    assert (tok.scale, tok.shift, tok.token_dim) == (0.5, 0.1, 16)
    x = images(2, 16)
    t = tok.encode(x, generator=torch.Generator().manual_seed(0))
    assert t.shape == (2, tok.num_tokens(16), 16) == (2, 16, 16)  # f2 -> 8x8x4 -> 2x2 patches
    mean = vae.encode(x).latent_dist.mean
    assert torch.allclose(tok.encode(x, sample=False), patchify((mean - 0.1) * 0.5, 2), atol=1e-6)
    y = tok.decode(t)
    assert y.shape == x.shape
    # Reload (also through a pipeline folder's "vae" subfolder): identical outputs.
    again = load_tokenizer(tmp_path)
    assert isinstance(again, DiffusersKLTokenizer)
    assert torch.equal(again.encode(x, generator=torch.Generator().manual_seed(0)), t)
    assert torch.equal(again.decode(t), y)
    assert again.identity() == tok.identity()


def test_diffusers_vq_adapter(tmp_path):
    from diffusers import VQModel

    torch.manual_seed(0)
    vq = VQModel(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        num_vq_embeddings=32,
        vq_embed_dim=3,
    )
    vq.save_pretrained(tmp_path, safe_serialization=True)
    tok = load_tokenizer(tmp_path)
    assert isinstance(tok, DiffusersVQTokenizer) and tok.token_type == TokenType.DISCRETE
    assert (tok.vocab_size, tok.token_dim) == (32, 3)
    x = images(2, 16)
    t = tok.encode(x)
    assert t.shape == (2, 64) and t.dtype == torch.long  # f2 -> 8x8 codes
    y = tok.decode(t)
    assert torch.allclose(y, vq(x).sample.clamp(-1, 1), atol=1e-5)  # indices carry all the information
    again = load_tokenizer(tmp_path, kind="diffusers-vq")
    assert torch.equal(again.encode(x), t) and torch.equal(again.decode(t), y)


def test_diffusers_folder_errors(tmp_path):
    _tiny_diffusers_kl(tmp_path)
    (tmp_path / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="missing diffusion_pytorch_model.safetensors"):
        load_tokenizer(tmp_path)
