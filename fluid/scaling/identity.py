"""What a sweep's run is, for deciding whether a finished run is still fresh: its full config,
its data (for ``shapes``, a digest of the code that draws it), its tokenizer's and text
embeddings' files, and the evaluation asked of it. Also the run's config fitted to its
tokenizer's token geometry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fluid.config import FluidConfig, TokenType
from fluid.files import file_digest
from fluid.scaling.sweep import RunSpec, Sweep
from fluid.shapes.digest import renderer_digest  # the code that makes the `shapes` data


def _digest(path: Path) -> str:

    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".json") and p.is_file())
        return ",".join(f"{p.name}:{file_digest(p, 12)}" for p in files)
    return file_digest(path, 12)


# Renderer digests of code that moved without drawing anything differently -> the digest of
# the same code at its new place, so that runs recorded before a move stay fresh.
SAME_RENDERER = {
    # fluid/data/shapes.py -> fluid/shapes/{scenes,render,dataset}.py
    "c49a3c469f42": "712cf29f4911,9f2fcbb0ca09,c0b14af3fc3e",
    "712cf29f4911,9f2fcbb0ca09,c4b8872bf544": "712cf29f4911,9f2fcbb0ca09,c0b14af3fc3e",  # renderer_digest in dataset.py
}


def data_identity(cfg: FluidConfig) -> dict:
    """What the training data is: for ``shapes``, the renderer's code; otherwise the files."""
    d = cfg.data
    out: dict[str, Any] = {"source": d.source, "resolution": d.resolution}
    if d.source == "shapes":
        out.update(holdout=d.holdout, renderer=renderer_digest())
    elif d.path:
        p = Path(d.path)
        if d.source == "cache" and (p / "manifest.json").exists():
            out["manifest"] = _digest(p / "manifest.json")
        elif p.is_file():
            out["file"] = _digest(p)
        else:
            out["path"] = str(d.path)
    return out


def tokenizer_for(sweep: Sweep, cfg: FluidConfig) -> str | None:
    return sweep.tokenizers.get(TokenType(cfg.model.token_type).value)


def fitted_config(sweep: Sweep, run: RunSpec) -> FluidConfig:
    """The run's config with the token geometry of the tokenizer it trains on (what the
    trainer will build: e.g. 64-channel tokens or an 8192-code vocabulary)."""
    from fluid.assets import tokenizer_path
    from fluid.tokenizers.load import load_tokenizer
    from fluid.train.trainer import fit_config_to_tokenizer

    cfg = run.config()
    tok = tokenizer_for(sweep, cfg) or cfg.tokenizer.path or tokenizer_path(cfg.model.token_type)
    if not Path(tok).exists():  # made later in the sweep's recipe: the preset's geometry until then
        return cfg
    return fit_config_to_tokenizer(
        cfg, load_tokenizer(tok, kind=cfg.tokenizer.kind, patch_size=cfg.tokenizer.patch_size)
    )


def run_identity(sweep: Sweep, run: RunSpec) -> dict:
    """Everything whose change makes a finished run's results stale."""
    from fluid.assets import tokenizer_path

    cfg = run.config()
    tok = Path(tokenizer_for(sweep, cfg) or cfg.tokenizer.path or tokenizer_path(cfg.model.token_type))
    ident = {
        "config": cfg.to_dict(),
        "data": data_identity(cfg),
        "tokenizer": _digest(tok) if tok.exists() else str(tok),
        "eval": sweep.eval,
        "eval_steps": run.eval_steps,
    }
    if sweep.text_embeddings:
        ident["text_embeddings"] = _digest(Path(sweep.text_embeddings))
    return ident


def with_new_defaults(recorded: dict) -> dict:
    """A recorded identity with config keys added since it was written filled in at their
    defaults (a new option left at its default changes nothing a run did), and a renderer
    digest from before a move of its code (``SAME_RENDERER``) read as the code's new digest."""
    from fluid.config import FluidConfig

    data = recorded.get("data")
    if isinstance(data, dict) and data.get("renderer") in SAME_RENDERER:
        recorded = {**recorded, "data": {**data, "renderer": SAME_RENDERER[data["renderer"]]}}
    if "config" not in recorded:
        return recorded
    defaults = FluidConfig().to_dict()
    config = {
        section: (
            {**defaults[section], **values}
            if isinstance(values, dict) and isinstance(defaults.get(section), dict)
            else values
        )
        for section, values in recorded["config"].items()
    }
    return {**recorded, "config": config}


def same_identity(recorded: dict | None, current: dict) -> bool:
    return recorded is not None and with_new_defaults(recorded) == current


def differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += differences(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return out
