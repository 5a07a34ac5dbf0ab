"""A sweep's records: each run's ``run.json`` in its folder, and the table read from them, one
row per run and evaluated step (``results.csv`` / ``results.json``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from fluid.files import atomic_write
from fluid.scaling.compute import compute_summary
from fluid.scaling.identity import fitted_config
from fluid.scaling.sweep import RunSpec, Sweep


class RunFolder:
    def __init__(self, root: Path, run: RunSpec):
        self.root, self.run = root, run
        self.path = root / "runs" / run.name
        self.train = self.path / "train"

    @property
    def record_path(self) -> Path:
        return self.path / "run.json"

    def read(self) -> dict | None:
        if not self.record_path.exists():
            return None
        try:
            return json.loads(self.record_path.read_text())
        except json.JSONDecodeError:
            return None  # a record cut short by a kill: treat as new, the checkpoints remain

    def write(self, record: dict) -> None:
        atomic_write(self.record_path, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))


def summarize_eval(rec: dict) -> dict:
    from fluid.eval.run import summary_row

    return summary_row(rec)


def result_rows(out: Path, sweep: Sweep) -> list[dict]:
    rows = []
    for run in sweep.runs:
        folder = RunFolder(out, run)
        rec = folder.read()
        if rec is None:
            continue
        base = {
            "run": run.name,
            **{f"tag.{k}": v for k, v in run.tags.items()},
            "preset": run.preset,
            "variant": rec["identity"]["config"]["model"]["token_type"]
            + "-"
            + rec["identity"]["config"]["model"]["order"],
            "status": rec["status"],
        }
        comp = rec.get("compute") or compute_summary(fitted_config(sweep, run))
        if rec["status"] != "done":
            rows.append({**base, "error": (rec.get("error") or "").splitlines()[0] if rec.get("error") else ""})
            continue
        spent = {k: round(sum(a.get(k, 0.0) for a in rec.get("attempts", [])), 1) for k in ("train_s", "eval_s")}
        for step, metrics in sorted(rec["results"].items(), key=lambda kv: int(kv[0])):
            step = int(step)
            saved = folder.path / "eval" / f"step-{step}" / "metrics.json"
            if "shapes_eval.overall" in metrics and "shapes_eval.images" not in metrics and saved.exists():
                metrics = {**metrics, **summarize_eval(json.loads(saved.read_text()))}  # recorded before the count was
            images = step * comp["batch_size"]
            rows.append(
                {
                    **base,
                    "step": step,
                    "params": comp["params"],
                    "images": images,
                    "train_flops": comp["train_flops_per_image"] * images,
                    **metrics,
                    **spent,
                }
            )
    return rows


def write_results(out: Path, sweep: Sweep) -> list[dict]:
    rows = result_rows(out, sweep)
    atomic_write(out / "results.json", lambda tmp: tmp.write_text(json.dumps(rows, indent=2) + "\n"))
    keys = list(dict.fromkeys(k for r in rows for k in r))

    def write_csv(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)

    atomic_write(out / "results.csv", write_csv)
    return rows
