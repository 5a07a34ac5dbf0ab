"""Checkpoint folders.

A checkpoint is a folder holding

* ``config.json``         the full :class:`FluidConfig` (enough to rebuild the model),
* ``model.safetensors``   raw weights (unwrapped: no DDP/compile prefixes),
* ``ema.safetensors``     EMA weights (used for sampling and evaluation),
* ``meta.json``           step, identities of the tokenizer and text encoder, counts,
* ``head-distilled.safetensors`` / ``head-distilled.json``  optional: a few-step head
                          distilled from the EMA head (``fluid distill-head``), its step
                          count and output meaning, and the SHA-256 of the teacher's weights
                          (a student is never paired with other weights than its teacher's),
* ``training_state.pt``   step (the data position and the random state follow from it),
                          optimizer, scheduler, log, for ``--resume`` (tensors and plain
                          data only: read with ``weights_only=True``).

FSDP runs keep the weights, EMA and optimizer state as shards in ``sharded/`` instead
(:mod:`fluid.checkpoint.sharded`); everything that reads weights reads both forms.

A run folder holds ``step-XXXXXXX`` checkpoints, a ``latest`` link to the newest, and
``metrics.jsonl``. Loading never unpickles code.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file

from fluid.config import ConfigError, FluidConfig
from fluid.files import atomic_write, save_safetensors

REQUIRED = ("config.json", "model.safetensors", "ema.safetensors")
INDEX, GENERATOR = "model_index.json", "generator"  # a pipeline folder: its index and its generator's subfolder
EXPORT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class CheckpointError(RuntimeError):
    """A checkpoint folder that cannot be used: missing files, or weights that do not fit the config."""


class RunWriteError(CheckpointError):
    """The run folder cannot be written (a full disk, no permission): a checkpoint or a log
    line was not saved. Checkpoints already written are untouched."""


def write_failure(what: str, error: BaseException) -> str:
    """A one-line reason for a failed write: the OS's words for OS errors (``No space left on
    device``), the first line of anything else (torch.save reports a full disk as a RuntimeError)."""
    if isinstance(error, OSError) and error.strerror:
        return f"cannot write {what}: {error.strerror}"
    return f"cannot write {what}: {str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__}"


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP / FSDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        else:
            return model


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in unwrap(model).state_dict().items()}


def save_checkpoint(
    folder: str | Path,
    cfg: FluidConfig,
    model: nn.Module | None,
    ema: nn.Module | None = None,
    training_state: dict | None = None,
    meta: dict | None = None,
    tmp: Path | None = None,
) -> Path:
    """Write a checkpoint atomically: into ``folder.tmp`` first, then renamed.

    A write that fails (full disk, no permission) removes the partial folder and raises
    :class:`RunWriteError`; an existing ``folder`` is replaced only once the new one is whole.
    ``model=None`` with ``tmp``: the weights are already in ``tmp`` (sharded, :mod:`fluid.checkpoint.sharded`).
    """
    folder = Path(folder)
    fresh = tmp is None
    tmp = folder.with_name(folder.name + ".tmp") if fresh else Path(tmp)
    try:
        if fresh:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        cfg.save(tmp / "config.json")
        if model is not None:
            save_safetensors(_state(model), tmp / "model.safetensors")
            save_safetensors(_state(ema if ema is not None else model), tmp / "ema.safetensors")
        (tmp / "meta.json").write_text(json.dumps(meta or {}, indent=2) + "\n")
        if training_state is not None:
            torch.save(training_state, tmp / "training_state.pt")
    except (OSError, RuntimeError) as e:
        shutil.rmtree(tmp, ignore_errors=True)  # leave no partial checkpoint to be mistaken for one
        raise RunWriteError(write_failure(f"checkpoint {folder.name} in {folder.parent}", e)) from e
    old = folder.with_name(folder.name + ".old")
    if folder.exists():  # the same step saved again (a stop right after a resume): swap, then delete
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def is_checkpoint(folder: Path) -> bool:
    """A finished checkpoint folder (not a ``.tmp`` being written or an ``.old`` being replaced)."""
    return folder.is_dir() and folder.suffix not in (".tmp", ".old") and (folder / "config.json").is_file()


def update_latest(run_dir: Path, ckpt: Path, keep: int) -> None:
    """Point ``run_dir/latest`` at ``ckpt`` and delete all but the newest ``keep`` step folders."""
    link = run_dir / "latest"
    tmp = run_dir / "latest.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(ckpt.name)
    os.replace(tmp, link)
    steps = sorted(p for p in run_dir.glob("step-*") if is_checkpoint(p))
    for old in steps[:-keep] if keep > 0 else []:
        if old.resolve() != ckpt.resolve():
            shutil.rmtree(old, ignore_errors=True)


def is_pipeline_folder(path: str | Path) -> bool:
    """A folder written by ``FluidPipeline.save_pretrained`` (its index and generator inside)."""
    path = Path(path)
    return (path / INDEX).is_file() and (path / GENERATOR / "config.json").is_file()


def resolve(path: str | Path) -> Path:
    """A checkpoint folder from a checkpoint folder, a run folder (its ``latest``) or a
    pipeline folder (its ``generator``)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if is_pipeline_folder(path):
        return path / GENERATOR  # a pipeline folder (FluidPipeline.save_pretrained)
    if (path / "config.json").exists() and not (path / "latest").exists():
        return path
    if (path / "latest").exists():
        return (path / "latest").resolve()
    steps = sorted(p for p in path.glob("step-*") if is_checkpoint(p))  # 'latest' missing or dangling
    if steps:
        return steps[-1]
    raise CheckpointError(
        f"{path} is neither a checkpoint folder (config.json, model.safetensors, "
        f"ema.safetensors) nor a run folder with a 'latest' checkpoint"
    )


def read_config(folder: str | Path) -> FluidConfig:
    folder = resolve(folder)
    try:
        return FluidConfig.load(folder / "config.json")
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {folder} has no config.json") from None
    except (ConfigError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {folder}: config.json is not a valid Fluid config: {e}") from None


def read_meta(folder: str | Path) -> dict:
    path = resolve(folder) / "meta.json"
    return json.loads(path.read_text()) if path.exists() else {}


def load_weights(model: nn.Module, folder: str | Path, ema: bool = True) -> None:
    """Load ``ema.safetensors`` (or ``model.safetensors``) into ``model``, with a clear error
    when a file is missing or the weights do not fit the model built from the config."""
    folder = resolve(folder)
    name = "ema.safetensors" if ema else "model.safetensors"
    own = unwrap(model).state_dict()
    state = read_weights(folder, ema, own)
    problems = [f"missing {k}" for k in own if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in own]
    problems += [
        f"{k}: shape {tuple(state[k].shape)} in the file, {tuple(v.shape)} in the model"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if problems:
        shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
        raise CheckpointError(f"checkpoint {folder}: {name} does not match config.json ({shown})")
    unwrap(model).load_state_dict(state)


def read_weights(
    folder: Path, ema: bool = True, shapes: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """The EMA (or raw) weights of a checkpoint folder as a CPU state dict: from its
    safetensors file, or gathered from the shards of an FSDP run (``shapes``, the state dict
    of a model built from its config, possibly on the meta device, names what to read)."""
    from fluid.checkpoint import sharded as dcp

    name = "ema.safetensors" if ema else "model.safetensors"
    if not (folder / name).exists() and dcp.is_sharded_checkpoint(folder) and (folder / "config.json").exists():
        if shapes is None:
            from fluid.model import Generator

            cfg = read_config(folder)
            with torch.device("meta"):
                shapes = Generator(cfg.model, cfg.text).state_dict()
        try:
            return dcp.read_full(folder, shapes, ema=ema)
        except Exception as e:  # DCP wraps reader errors in its own types
            raise CheckpointError(
                f"checkpoint {folder}: cannot read the sharded weights: {str(e).splitlines()[0]}"
            ) from None
    missing = [f for f in ("config.json", name) if not (folder / f).exists()]
    if missing:
        raise CheckpointError(f"checkpoint {folder} is missing {', '.join(missing)}")
    try:
        return load_file(str(folder / name))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"checkpoint {folder}: cannot read {name}: {e}") from None


def export(src: str | Path, dst: str | Path, dtype: str = "fp16") -> Path:
    """An inference-only copy of a checkpoint: config, EMA weights in ``dtype``, meta.

    This is the shipped form: a fraction of the size of a training checkpoint.
    """
    src, dst = resolve(src), Path(dst)
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(EXPORT_DTYPES)}, not {dtype!r}")
    cfg = read_config(src)
    state = read_weights(src, ema=True)
    dst.mkdir(parents=True, exist_ok=True)
    cfg.save(dst / "config.json")
    written = {k: v.to(EXPORT_DTYPES[dtype]) if v.is_floating_point() else v for k, v in state.items()}
    save_safetensors(written, dst / "ema.safetensors")
    copy_distilled_head(src, dst, written)  # a distilled head goes with the weights it was made for
    meta = {**read_meta(src), "inference_only": True, "dtype": dtype}
    (dst / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return dst


def load_training_state(folder: str | Path) -> dict:
    path = resolve(folder) / "training_state.pt"
    if not path.exists():
        raise CheckpointError(f"checkpoint {path.parent} has no training_state.pt: it cannot be resumed")
    return torch.load(path, map_location="cpu", weights_only=True)


# -- a distilled few-step head (fluid distill-head) -------------------------------------------

DISTILLED_WEIGHTS, DISTILLED_INFO = "head-distilled.safetensors", "head-distilled.json"


@dataclasses.dataclass
class DistilledHead:
    head: nn.Module
    """A :class:`~fluid.model.heads.DiffusionHead` with the student's weights."""
    steps: int
    """DDIM steps it samples in (the respaced grid of ``GaussianDiffusion.respace(steps)``)."""
    prediction: str
    """What its output means: ``v`` or ``eps``."""
    info: dict
    """Everything ``head-distilled.json`` holds."""


def head_digest(head: nn.Module | dict) -> str:
    """SHA-256 over a head's weights (a module, or its state dict; names, shapes, float32
    bytes): the teacher's identity. The same for a head in fp32 and for its fp16 copy loaded
    back into fp32, since the fp16 values are what both hold."""
    state = head.state_dict() if isinstance(head, nn.Module) else head
    h = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def save_distilled_head(folder: str | Path, student: nn.Module | dict, teacher: nn.Module | dict, info: dict) -> Path:
    """Write the two files into the checkpoint folder ``folder``; ``info`` must hold ``steps``
    and ``prediction``. The JSON is written last, so a folder with it has the weights too."""
    folder = Path(folder)
    for key in ("steps", "prediction"):
        if key not in info:
            raise ValueError(f"the distilled head's info needs {key!r}")
    state = student.state_dict() if isinstance(student, nn.Module) else student
    state = {k: v.detach().float().cpu().contiguous() for k, v in state.items()}
    atomic_write(folder / DISTILLED_WEIGHTS, lambda tmp: save_safetensors(state, tmp))
    record = {**info, "teacher_sha256": head_digest(teacher)}
    atomic_write(folder / DISTILLED_INFO, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))
    return folder / DISTILLED_INFO


def _read_distilled(folder: Path) -> tuple[dict, dict] | None:
    """(info, student weights) of a checkpoint folder's distilled head, or None."""
    if not (folder / DISTILLED_INFO).exists():
        return None
    try:
        return json.loads((folder / DISTILLED_INFO).read_text()), load_file(str(folder / DISTILLED_WEIGHTS))
    except (json.JSONDecodeError, OSError, SafetensorError) as e:
        raise CheckpointError(f"{folder}: the distilled head cannot be read ({e})") from None


def load_distilled_head(folder: str | Path, head: nn.Module) -> DistilledHead | None:
    """The distilled head saved in checkpoint folder ``folder``, built as a copy of the
    generator's ``head`` (its teacher, already loaded) with the student's weights; None when
    the folder has none. :class:`CheckpointError` when the files are broken or were distilled
    from other weights."""
    folder = Path(folder)
    found = _read_distilled(folder)
    if found is None:
        return None
    info, state = found
    if info.get("teacher_sha256") != head_digest(head):
        raise CheckpointError(
            f"{folder / DISTILLED_INFO} was distilled from other head weights than this checkpoint's; "
            "distil it again (fluid distill-head)"
        )
    steps, prediction = info.get("steps"), info.get("prediction")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2 or prediction not in ("v", "eps"):
        raise CheckpointError(f"{folder / DISTILLED_INFO}: steps must be an integer >= 2 and prediction v or eps")
    student = copy.deepcopy(head)
    try:
        student.load_state_dict(state)  # copies into the teacher's dtypes and device
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(f"{folder / DISTILLED_WEIGHTS} does not fit the generator's head ({e})") from None
    return DistilledHead(student.eval().requires_grad_(False), steps, prediction, info)


def copy_distilled_head(src: str | Path, dst: str | Path, weights: dict) -> bool:
    """Copy checkpoint ``src``'s distilled head into ``dst``, whose generator weights
    (``weights``, a state dict with ``head.*`` names, in the dtype written) may be a rounded
    copy of ``src``'s (an fp16 export): the head is stamped with their digest. False when
    ``src`` has none."""
    found = _read_distilled(Path(src))
    if found is None:
        return False
    info, state = found
    teacher = {k[len("head.") :]: v for k, v in weights.items() if k.startswith("head.")}
    info.pop("teacher_sha256", None)
    save_distilled_head(dst, state, teacher, info)
    return True
