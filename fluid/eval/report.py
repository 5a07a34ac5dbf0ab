"""The evaluation's outputs: ``metrics.json`` (everything measured, with the config and the
checkpoint's identity) and ``report.md`` (tables, and per-family sample grids in which
every image judged wrong has a red frame and every image judged right a green one)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image, ImageOps

from fluid.sample.grid import image_grid
from fluid.sample.pipeline import to_pil

PASS, FAIL = (40, 170, 70), (220, 30, 30)


def framed(images: torch.Tensor, ok: list[bool], scale: int = 2, border: int = 3) -> list[Image.Image]:
    """PIL images, enlarged ``scale`` times, each in a green (right) or red (wrong) frame."""
    out = []
    for img, good in zip(to_pil(images), ok):
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
        out.append(ImageOps.expand(img, border=border, fill=PASS if good else FAIL))
    return out


def family_grids(result, images: torch.Tensor, out_dir: Path) -> dict[str, str]:
    """One grid per family (rows: prompts, columns: seeds); returns {family: file name}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for family in dict.fromkeys(it.family for it in result.items):
        idx = [i for i, it in enumerate(result.items) if it.family is family]
        seeds = list(dict.fromkeys(result.items[i].seed for i in idx))
        rows = len(idx) // len(seeds)
        # items are seed-major within a family; the grid wants prompt-major
        order = [idx[s * rows + r] for r in range(rows) for s in range(len(seeds))]
        tiles = framed(images[order], [result.correct[i] for i in order], scale=1 if images.shape[-1] >= 128 else 2)
        labels = [result.items[idx[r]].prompt for r in range(rows)]
        grid = image_grid(tiles, rows, len(seeds), labels, [f"seed {s}" for s in seeds], scale=1)
        name = f"{family.value}.png"
        grid.save(out_dir / name)
        files[family.value] = name
    return files


def _describe_detections(dets) -> str:
    return ", ".join(f"{d.color} {d.kind} @({d.cx:.2f},{d.cy:.2f})" for d in dets) or "nothing"


def _table(rows: list[list], header: list[str]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_report(
    out_dir: str | Path, record: dict, shapes=None, images: torch.Tensor | None = None, max_failures: int = 40
) -> dict[str, str]:
    """Write ``metrics.json`` and ``report.md`` into ``out_dir``; ``shapes`` (a
    ShapesEvalResult) and its ``images`` add the sample grids and the failure list."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    grids = family_grids(shapes, images, out / "shapes_eval") if shapes is not None and images is not None else {}
    if grids:
        record.setdefault("files", {})["shapes_eval_grids"] = {k: f"shapes_eval/{v}" for k, v in grids.items()}
    (out / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")

    ck, m = record.get("checkpoint", {}), record.get("metrics", {})
    lines = [
        f"# Evaluation of {ck.get('name', '?')}",
        "",
        f"- checkpoint: `{ck.get('path')}` ({ck.get('variant')}, step {ck.get('step')}, weights "
        f"`{ck.get('weights_sha256')}`)",
        f"- tokenizer `{ck.get('tokenizer')}`, text encoder `{ck.get('text_encoder')}`",
        f"- written {record.get('time', '')} in {record.get('seconds', '?')} s; all numbers in `metrics.json`",
        "",
    ]
    scalars = []
    if "shapes_eval" in m:
        scalars.append(["ShapesEval overall (GenEval-style, higher is better)", _fmt(m["shapes_eval"]["overall"])])
    if "shapes_fd" in m:
        fd = m["shapes_fd"]
        scalars.append([f"shapes_fd (ours, not FID; {fd['images']} images, lower is better)", _fmt(fd["value"])])
        scalars.append(["shapes_fd of real renders of the same prompts (floor)", _fmt(fd["real"])])
    if "val_loss" in m:
        v = m["val_loss"]
        scalars.append([f"validation loss ({v['loss']}, {v['pairs']} pairs)", _fmt(v["value"])])
    if "fid" in m:
        scalars.append([f"FID MS-COCO 2014 ({m['fid']['pairs']} pairs)", _fmt(m["fid"]["value"])])
    if "geneval" in m:
        scalars.append(["GenEval export", f"`{m['geneval']['out_dir']}` ({m['geneval']['prompts']} prompts)"])
    lines += _table(scalars, ["metric", "value"]) + [""]

    if "shapes_eval" in m:
        se = m["shapes_eval"]
        fams = list(se["per_family"])
        rows = [
            ("this model", se),
            ("this model, template reader", se.get("template_reader")),
            ("real renders through its tokenizer (ceiling)", se.get("tokenizer_ceiling")),
        ]
        lines += [
            "## ShapesEval per family",
            "",
            f"{se['images']} images; the fraction judged right by GenEval's rule of each family, "
            "overall = mean over families.",
            "",
        ]
        lines += _table(
            [[name] + [_fmt(r["per_family"][f]) for f in fams] + [_fmt(r["overall"])] for name, r in rows if r],
            ["images"] + fams + ["overall"],
        )
        lines += [""]
    if "detector" in m:
        d = m["detector"]
        fams = [k for k in d["render"] if k != "min"]
        lines += [
            "## Detector accuracy on real scenes",
            "",
            f"{d['per_family']} `{d['split']}` scenes per family; blobs filed under a kind: {_fmt(d['blobs_named'])}",
            "",
        ]
        lines += _table(
            [[name] + [_fmt(d[name][f]) for f in fams + ["min"]] for name in d["sources"]], ["images"] + fams + ["min"]
        )
        lines += [""]
    for family, name in grids.items():
        lines += [f"### {family}", "", f"![{family}](shapes_eval/{name})", ""]
    if shapes is not None:
        fails = [(it, d) for it, ok, d in zip(shapes.items, shapes.correct, shapes.detections) if not ok]
        lines += [f"## Failures ({len(fails)} of {len(shapes.items)})", ""]
        lines += [
            f'- {it.family.value}: "{it.prompt}" seed {it.seed}: detected {_describe_detections(d)}'
            for it, d in fails[:max_failures]
        ]
        if len(fails) > max_failures:
            lines.append(f"- ... and {len(fails) - max_failures} more")
        lines.append("")
    (out / "report.md").write_text("\n".join(lines))
    return {"metrics": str(out / "metrics.json"), "report": str(out / "report.md")}
