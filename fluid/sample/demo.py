"""``fluid demo``: the shipped models generate a fixed prompt set; the result is a grid, a
picture of random-order generation in progress, a JSON record and an HTML page."""

from __future__ import annotations

import html
import json
import math
import time
from pathlib import Path

from tqdm.auto import tqdm

from fluid.sample.grid import image_grid, masked_preview, progress_strip
from fluid.sample.pipeline import FluidPipeline

# One or more prompts per GenEval family, all from the built-in data's caption templates.
DEMO_PROMPTS = {
    "single_object": ["a circle", "a triangle"],
    "colors": ["a red square", "a blue circle", "a yellow triangle", "a green cross"],
    "two_object": ["a circle and a square"],
    "counting": ["three circles"],
    "position": ["a square left of a circle"],
    "color_attr": ["a purple cross and an orange circle"],
}
DEMO_SEEDS = (0, 1, 2, 3)


def _progress_picture(pipe: FluidPipeline, prompts: list[str], seed: int, max_cols: int = 9):
    """Decode the partly generated tokens after each step; grey = not generated yet."""
    record: list = []
    pipe.generate_tokens(prompts, seed=seed, on_step=lambda *frame: record.append(frame))
    keep = (
        sorted({round(i * (len(record) - 1) / (max_cols - 1)) for i in range(max_cols)})
        if len(record) > max_cols
        else list(range(len(record)))
    )
    grid = int(math.isqrt(pipe.model.cfg.num_tokens))
    frames, labels = [], []
    for k in keep:
        step, tokens, known = record[k]
        previews = pipe.decode(tokens)
        frames.append(masked_preview(previews, known.cpu(), grid).cpu())
        labels.append(f"step {step + 1}: {int(known[0].sum())}/{known.shape[1]}")
    return progress_strip(frames, prompts, labels)


def run_demo(
    out_dir: str | Path,
    variants: list[str],
    checkpoints: dict[str, str] | None = None,
    prompts: dict[str, list[str]] | None = None,
    seeds=DEMO_SEEDS,
    device: str | None = None,
    **sample,
) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prompts = prompts or DEMO_PROMPTS
    flat = [(fam, p) for fam, ps in prompts.items() for p in ps]
    t0 = time.perf_counter()
    record = {"prompts": [{"family": f, "prompt": p} for f, p in flat], "seeds": list(seeds), "variants": {}}
    sections, first_seed = [], {}
    for variant in tqdm(variants, desc="demo", unit="variant"):
        tv = time.perf_counter()
        pipe = FluidPipeline.from_pretrained((checkpoints or {}).get(variant), variant=variant, device=device)
        # Each image gets its own seed: row = prompt, column = seed.
        images = [None] * (len(flat) * len(seeds))
        for j, seed in enumerate(seeds):
            imgs = pipe([p for _, p in flat], seed=seed, **sample)
            for i, img in enumerate(imgs):
                images[i * len(seeds) + j] = img
        first_seed[variant] = images[0 :: len(seeds)]
        grid = image_grid(images, len(flat), len(seeds), [p for _, p in flat], [f"seed {s}" for s in seeds])
        grid_file = f"grid-{variant}.png"
        grid.save(out / grid_file)
        entry = {"grid": grid_file, "seconds": round(time.perf_counter() - tv, 2), "sample": pipe.settings(**sample)}
        strip = _progress_picture(pipe, [p for _, p in flat[:4]], seed=seeds[0])
        entry["progress"] = f"progress-{variant}.png"
        strip.save(out / entry["progress"])
        record["variants"][variant] = entry
        sections.append((variant, entry))
    if len(variants) > 1:
        # The variants side by side: rows = prompts, columns = variants, same seed.
        images = [first_seed[v][i] for i in range(len(flat)) for v in variants]
        image_grid(images, len(flat), len(variants), [p for _, p in flat], variants).save(out / "side-by-side.png")
        record["side_by_side"] = "side-by-side.png"
    record["seconds"] = round(time.perf_counter() - t0, 2)
    (out / "demo.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "index.html").write_text(_page(record, flat, sections))
    return record


def _page(record: dict, flat, sections) -> str:
    rows = "".join(f"<tr><td>{html.escape(f)}</td><td>{html.escape(p)}</td></tr>" for f, p in flat)
    body = []
    if "side_by_side" in record:
        body.append(
            f"<h2>The variants side by side (seed {record['seeds'][0]})</h2><img src='{record['side_by_side']}'>"
        )
    for variant, entry in sections:
        body.append(
            f"<h2>{html.escape(variant)}</h2><p>{entry['seconds']} s; sampling: "
            f"<code>{html.escape(json.dumps(entry['sample']))}</code></p>"
            f"<h3>Samples (rows: prompts, columns: seeds)</h3><img src='{entry['grid']}'>"
        )
        if "progress" in entry:
            body.append(
                f"<h3>Generation in progress (grey: tokens not generated yet)</h3><img src='{entry['progress']}'>"
            )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Fluid demo</title>"
        f"<style>body{{font-family:sans-serif;margin:2em}} img{{image-rendering:pixelated;max-width:100%}}"
        f"td{{padding:2px 10px}}</style></head><body><h1>Fluid demo</h1>"
        f"<p>Made by <code>fluid demo</code> in {record['seconds']} s.</p>"
        f"<table><tr><th>family</th><th>prompt</th></tr>{rows}</table>{''.join(body)}</body></html>\n"
    )
