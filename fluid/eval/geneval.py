"""GenEval export: generate images for GenEval's prompts in the folder layout its official
evaluator reads, so that users with its detector stack (mmdetection + CLIP) can score them.

Input: GenEval's prompt metadata, a JSONL file with one object per prompt, e.g.
``{"tag": "two_object", "include": [{"class": "cat", "count": 1}, ...], "prompt": "a photo of a cat and a dog"}``.
Output, for the i-th line::

    <out>/<i:05d>/metadata.jsonl     that line, unchanged (one JSON object)
    <out>/<i:05d>/samples/<k:04d>.png  k = 0 .. n_samples - 1
    <out>/<i:05d>/grid.png           the samples side by side
    <out>/<i:05d>/fluid.json         what made the folder (read by a rerun, ignored by GenEval)
    <out>/fluid_export.json          what made the export: model identity, sampling settings, seed

Image k of prompt i is image k of seed ``seed + i``, so a folder is the same whether it was
written in one run or after an interruption. A rerun keeps a folder only if its
``fluid.json`` names the same maker, seed, prompt record and sample count; any other folder is
written again from scratch (no stale or extra samples survive, which GenEval would score), and
folders past the end of the prompt list are removed. An export made by another model or with
other sampling settings is refused unless ``overwrite``.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

from fluid.sample.pipeline import to_pil

ImageSource = Callable[[list[str], int], torch.Tensor]  # (prompts, seed) -> (B, 3, H, W) in [-1, 1]
EXPORT_FORMAT = "fluid-geneval-export/1"
EXPORT_FILE, STAMP_FILE = "fluid_export.json", "fluid.json"


class GenEvalExportError(ValueError):
    """The output folder holds an export made by another model or with other settings."""


def read_geneval_metadata(path: str | Path) -> list[dict]:
    """The prompt records of a GenEval metadata JSONL file, in file order (blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GenEval metadata file {path} does not exist")
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not valid JSON ({e})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str) or not rec["prompt"].strip():
            raise ValueError(f"{path}:{n}: each line must be an object with a non-empty 'prompt' string")
        records.append(rec)
    if not records:
        raise ValueError(f"{path} holds no prompts")
    return records


def _grid(images: list[Image.Image], pad: int = 2) -> Image.Image:
    cols = min(len(images), 4)
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    sheet = Image.new("RGB", (cols * w + (cols + 1) * pad, rows * h + (rows + 1) * pad), (255, 255, 255))
    for k, img in enumerate(images):
        sheet.paste(img, (pad + (k % cols) * (w + pad), pad + (k // cols) * (h + pad)))
    return sheet


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=True).encode()).hexdigest()[:16]


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _prompt_folders(out: Path) -> list[Path]:
    return [p for p in out.iterdir() if p.is_dir() and p.name.isdigit()] if out.is_dir() else []


def check_export(out_dir: str | Path, maker: dict, seed: int = 0, overwrite: bool = False) -> bool:
    """True if ``out_dir`` holds another export (made by another maker or seed, or by an unknown
    one) that ``overwrite`` allows to replace; :class:`GenEvalExportError` if it does not
    allow it; False for a new folder or one to resume. Call it before sampling anything."""
    out = Path(out_dir)
    old = _read_json(out / EXPORT_FILE)
    maker = json.loads(json.dumps(maker))
    if old is not None and old.get("maker") == maker and old.get("seed") == seed:
        return False
    if old is None and not _prompt_folders(out):
        return False
    if overwrite:
        return True
    what = (
        f"an export made by {json.dumps(old.get('maker'))} with seed {old.get('seed')}"
        if old is not None
        else f"{len(_prompt_folders(out))} prompt folders of an export that does not say what made it"
    )
    raise GenEvalExportError(
        f"{out} holds {what}; this one is made by {json.dumps(maker)} with seed {seed}. "
        f"Choose another output folder, or replace it (--geneval-overwrite)"
    )


def _folder_done(folder: Path, stamp: dict) -> bool:
    samples = folder / "samples"
    return (
        _read_json(folder / STAMP_FILE) == stamp
        and (folder / "grid.png").is_file()
        and (folder / "metadata.jsonl").is_file()
        and samples.is_dir()
        and sorted(p.name for p in samples.iterdir()) == [f"{k:04d}.png" for k in range(stamp["samples"])]
    )


def export_geneval(
    source: ImageSource,
    metadata: str | Path | list[dict],
    out_dir: str | Path,
    n_samples: int = 4,
    seed: int = 0,
    progress: bool = True,
    *,
    maker: dict,
    overwrite: bool = False,
) -> dict:
    """Write GenEval's folder layout for every prompt record; returns a summary.

    ``maker`` identifies what makes the images (model identity and sampling settings, plain
    JSON); together with ``seed`` it is the export's identity (see the module docstring).
    """
    from tqdm.auto import tqdm

    records = read_geneval_metadata(metadata) if not isinstance(metadata, list) else metadata
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be an integer >= 1, not {n_samples!r}")
    out = Path(out_dir)
    header = {"format": EXPORT_FORMAT, "maker": json.loads(json.dumps(maker)), "seed": seed}
    if check_export(out, maker, seed, overwrite):
        for folder in _prompt_folders(out):
            shutil.rmtree(folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / EXPORT_FILE).write_text(
        json.dumps({**header, "prompts": len(records), "samples_per_prompt": n_samples}, indent=2) + "\n"
    )
    written = kept = 0
    for i, rec in enumerate(tqdm(records, desc="geneval export", unit="prompt", disable=not progress)):
        folder = out / f"{i:05d}"
        stamp = {"key": _key(header, rec, n_samples), "prompt": rec["prompt"], "seed": seed + i, "samples": n_samples}
        if _folder_done(folder, stamp):
            kept += 1
            continue
        shutil.rmtree(folder, ignore_errors=True)  # whatever was there: stale, partial or other samples
        images = to_pil(source([rec["prompt"]] * n_samples, seed + i))
        (folder / "samples").mkdir(parents=True)
        for k, img in enumerate(images):
            img.save(folder / "samples" / f"{k:04d}.png")
        _grid(images).save(folder / "grid.png")
        (folder / "metadata.jsonl").write_text(json.dumps(rec) + "\n", encoding="utf-8")
        (folder / STAMP_FILE).write_text(json.dumps(stamp, indent=1) + "\n")  # last: marks completion
        written += 1
    # Folders past the end of this prompt list (a longer list exported before): GenEval would score them.
    extra = [p for p in out.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) >= len(records)]
    for folder in extra:
        shutil.rmtree(folder)
    return {
        "out_dir": str(out),
        "prompts": len(records),
        "samples_per_prompt": n_samples,
        "seed": seed,
        "maker": header["maker"],
        "written": written,
        "kept": kept,
        "removed": len(extra),
    }
