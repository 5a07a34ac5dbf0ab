"""GenEval export: generate images for GenEval's prompts in the folder layout its official
evaluator reads, so that users with its detector stack (mmdetection + CLIP) can score them.

Input: GenEval's prompt metadata, a JSONL file with one object per prompt, e.g.
``{"tag": "two_object", "include": [{"class": "cat", "count": 1}, ...], "prompt": "a photo of a cat and a dog"}``.
Output, for the i-th line::

    <out>/<i:05d>/metadata.jsonl     that line, unchanged (one JSON object)
    <out>/<i:05d>/samples/<k:04d>.png  k = 0 .. n_samples - 1
    <out>/<i:05d>/grid.png           the samples side by side

Prompt i is generated with seed ``seed + i``, all its samples in one call, so a folder is
the same whether it was written in one run or after an interruption; complete folders are
skipped when the export is resumed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from fluid.sample.pipeline import to_pil

ImageSource = Callable[[list[str], int], torch.Tensor]  # (prompts, seed) -> (B, 3, H, W) in [-1, 1]


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


def _complete(folder: Path, n_samples: int) -> bool:
    return (folder / "metadata.jsonl").is_file() and (folder / "grid.png").is_file() and all(
        (folder / "samples" / f"{k:04d}.png").is_file() for k in range(n_samples))


def export_geneval(source: ImageSource, metadata: str | Path | list[dict], out_dir: str | Path, n_samples: int = 4,
                   seed: int = 0, progress: bool = True) -> dict:
    """Write GenEval's folder layout for every prompt record; returns a summary."""
    from tqdm.auto import tqdm

    records = read_geneval_metadata(metadata) if not isinstance(metadata, list) else metadata
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, not {n_samples}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = skipped = 0
    for i, rec in enumerate(tqdm(records, desc="geneval export", unit="prompt", disable=not progress)):
        folder = out / f"{i:05d}"
        if _complete(folder, n_samples):
            skipped += 1
            continue
        images = to_pil(source([rec["prompt"]] * n_samples, seed + i))
        (folder / "samples").mkdir(parents=True, exist_ok=True)
        for k, img in enumerate(images):
            img.save(folder / "samples" / f"{k:04d}.png")
        _grid(images).save(folder / "grid.png")
        (folder / "metadata.jsonl").write_text(json.dumps(rec) + "\n", encoding="utf-8")  # last: marks completion
        written += 1
    return {"out_dir": str(out), "prompts": len(records), "samples_per_prompt": n_samples, "seed": seed,
            "written": written, "skipped_complete": skipped}
