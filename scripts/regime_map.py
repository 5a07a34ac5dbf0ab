"""The regime map of an equal-budget ablation: for every continuous-token arm, the gap to the
discrete-token sibling trained at the same budget (ShapesEval overall and ``shapes_fd``),
against the head-to-token width ratio and the token's channels.

    cd RUN && python scripts/regime_map.py sweep/results.csv --sweep fluid-lead-cpu \
        --reference arm=sib-discrete-random --out docs/ablations/fluid-lead-cpu/regime

Writes ``regime.md`` (the table) and ``regime.png`` (the figure). Token geometry and head
width come from each arm's config fitted to its tokenizer, so run it from the folder the
sweep ran in (tokenizer folders in a sweep may be relative to it).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from fluid.scaling.runner import fitted_config
from fluid.scaling.sweep import load_sweep


def _float(v: str) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def regime_rows(results: Path, sweep_name: str, reference: str, step: int | None) -> list[dict]:
    sweep = load_sweep(sweep_name)
    with open(results, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("status") == "done"]
    if not rows:
        raise SystemExit(f"{results}: no finished runs")
    step = step or max(int(r["step"]) for r in rows)
    at = {r["run"]: r for r in rows if int(r["step"]) == step}
    if reference not in at:
        raise SystemExit(f"{results}: the reference {reference!r} has no row at step {step} "
                         f"(finished at that step: {', '.join(sorted(at)) or 'none'})")
    ref = at[reference]
    out = []
    for run in sweep.runs:
        r = at.get(run.name)
        if r is None or not r["variant"].startswith("continuous"):
            continue
        m = fitted_config(sweep, run).model
        overall, fd = _float(r.get("shapes_eval.overall")), _float(r.get("shapes_fd"))
        out.append({"run": run.name, "variant": r["variant"], "step": step, "images": int(r["images"]),
                    "tokens": m.num_tokens, "channels": m.token_dim, "head_width": m.head_width_,
                    "ratio": round(m.head_width_ / m.token_dim, 2), "prediction": m.prediction,
                    "noise_draws": m.timestep_multiplier, "overall": overall, "shapes_fd": fd,
                    "gap_overall": round(overall - float(ref["shapes_eval.overall"]), 4) if overall is not None else None,
                    "gap_fd": round(fd - float(ref["shapes_fd"]), 1) if fd is not None else None})
    return out


def write_table(rows: list[dict], reference: str, path: Path) -> None:
    lines = [f"Continuous arms against `{reference}` at step {rows[0]['step']} ({rows[0]['images']:,d} images each). "
             "Gap = continuous minus discrete: above 0 on ShapesEval and below 0 on `shapes_fd` is continuous ahead.", "",
             "| arm | variant | tokens x channels | head | head / token width | target | draws | ShapesEval | gap | "
             "`shapes_fd` | gap |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['variant']} | {r['tokens']} x {r['channels']} | {r['head_width']} | {r['ratio']}x | "
                     f"{r['prediction']} | {r['noise_draws']} | {r['overall']} | {r['gap_overall']:+.3f} | "
                     f"{r['shapes_fd']:.0f} | {r['gap_fd']:+.0f} |")
    path.write_text("\n".join(lines) + "\n")


def write_figure(rows: list[dict], reference: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    channels = sorted({r["channels"] for r in rows})
    markers = {"eps": "o", "x": "s", "v": "^"}
    for ax, key, label in ((axes[0], "gap_overall", "ShapesEval overall: continuous - discrete"),
                           (axes[1], "gap_fd", "shapes_fd: continuous - discrete")):
        for c, colour in zip(channels, ("tab:blue", "tab:orange", "tab:green", "tab:red")):
            for r in (r for r in rows if r["channels"] == c and r["variant"] == "continuous-random"):
                ax.scatter(r["ratio"], r[key], color=colour, marker=markers.get(r["prediction"], "o"),
                           s=30 + 15 * r["noise_draws"], label=f"{r['tokens']} x {c}")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("head width / token channels")
        ax.set_title(label, fontsize=10)
        handles, labels = ax.get_legend_handles_labels()
        seen = dict(zip(labels, handles))
        ax.legend(seen.values(), seen.keys(), title="tokens x channels", fontsize=8)
    fig.suptitle(f"Continuous random-order arms against {reference} (marker: o eps, s x-prediction; size: noise draws)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path, help="the sweep's results.csv")
    p.add_argument("--sweep", required=True, help="the sweep (name or YAML) that made it")
    p.add_argument("--reference", default="arm=sib-discrete-random", help="the discrete run to compare against")
    p.add_argument("--step", type=int, default=None, help="evaluated step (default: the last)")
    p.add_argument("--out", type=Path, required=True, help="folder for regime.md, regime.png, regime.json")
    args = p.parse_args(argv)
    rows = regime_rows(args.results, args.sweep, args.reference, args.step)
    args.out.mkdir(parents=True, exist_ok=True)
    write_table(rows, args.reference, args.out / "regime.md")
    write_figure(rows, args.reference, args.out / "regime.png")
    (args.out / "regime.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(json.dumps({"rows": len(rows), "out": str(args.out)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
