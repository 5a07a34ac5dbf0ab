"""The regime map of an equal-budget ablation: for every continuous-token arm, the gap to the
discrete-token sibling trained at the same budget (ShapesEval overall and ``shapes_fd``),
against the head-to-token width ratio and the token's channels.

    cd RUN && python scripts/regime_map.py sweep/results.csv --sweep fluid-lead-cpu --out regime/

Each continuous arm is compared with the discrete arm of the same order (random or raster).
Writes ``regime.md`` (the table), ``regime.png`` (the figure) and ``regime.json``. Token geometry and head
width come from each arm's config fitted to its tokenizer, so run it from the folder the
sweep ran in (tokenizer folders in a sweep may be relative to it).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from fluid.scaling.identity import fitted_config
from fluid.scaling.sweep import load_sweep


def _float(v: str) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def regime_rows(results: Path, sweep_name: str, references: dict[str, str] | None, step: int | None) -> list[dict]:
    """One row per continuous-token run; its reference is the discrete run of the same order
    (``references`` maps an order to a run name; default: the sweep's one discrete run per order)."""
    sweep = load_sweep(sweep_name)
    with open(results, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("status") == "done"]
    if not rows:
        raise SystemExit(f"{results}: no finished runs")
    step = step or max(int(r["step"]) for r in rows)
    at = {r["run"]: r for r in rows if int(r["step"]) == step}
    models = {run.name: fitted_config(sweep, run).model for run in sweep.runs}
    if not references:
        references = {}
        for name, m in models.items():
            if m.token_type.value == "discrete" and name in at:
                if m.order.value in references:
                    raise SystemExit(
                        f"two discrete {m.order.value} runs ({references[m.order.value]}, {name}): "
                        "name the reference with --reference ORDER=RUN"
                    )
                references[m.order.value] = name
    for order, name in references.items():
        if name not in at:
            raise SystemExit(
                f"{results}: the {order} reference {name!r} has no row at step {step} "
                f"(finished at that step: {', '.join(sorted(at)) or 'none'})"
            )
    out = []
    for run in sweep.runs:
        r, m = at.get(run.name), models[run.name]
        if r is None or m.token_type.value != "continuous" or m.order.value not in references:
            continue
        ref = at[references[m.order.value]]
        overall, fd = _float(r.get("shapes_eval.overall")), _float(r.get("shapes_fd"))
        out.append(
            {
                "run": run.name,
                "variant": r["variant"],
                "reference": references[m.order.value],
                "step": step,
                "images": int(r["images"]),
                "tokens": m.num_tokens,
                "channels": m.token_dim,
                "head_width": m.head_width_,
                "ratio": round(m.head_width_ / m.token_dim, 2),
                "prediction": m.prediction,
                "noise_draws": m.timestep_multiplier,
                "overall": overall,
                "shapes_fd": fd,
                "reference_overall": float(ref["shapes_eval.overall"]),
                "reference_fd": float(ref["shapes_fd"]),
                "gap_overall": round(overall - float(ref["shapes_eval.overall"]), 4) if overall is not None else None,
                "gap_fd": round(fd - float(ref["shapes_fd"]), 1) if fd is not None else None,
            }
        )
    if not out:
        raise SystemExit(f"{results}: no continuous run with a discrete reference of its order at step {step}")
    return out


def write_table(rows: list[dict], path: Path) -> None:
    refs = ", ".join(sorted({f"`{r['reference']}` ({r['variant'].split('-')[1]})" for r in rows}))
    lines = [
        f"Continuous arms against the discrete run of the same order ({refs}), at step {rows[0]['step']} "
        f"({rows[0]['images']:,d} images each). Gap = continuous minus discrete: above 0 on ShapesEval and "
        "below 0 on `shapes_fd` is continuous ahead.",
        "",
        "| arm | order | tokens x channels | head | head / token width | target | draws | ShapesEval | gap | "
        "`shapes_fd` | gap |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in sorted(rows, key=lambda r: (r["variant"], r["channels"], r["ratio"], r["prediction"], r["noise_draws"])):
        lines.append(
            f"| {r['run']} | {r['variant'].split('-')[1]} | {r['tokens']} x {r['channels']} | {r['head_width']} | "
            f"{r['ratio']:g}x | {r['prediction']} | {r['noise_draws']} | {r['overall']:.3f} | "
            f"{r['gap_overall']:+.3f} | {r['shapes_fd']:.0f} | {r['gap_fd']:+.0f} |"
        )
    path.write_text("\n".join(lines) + "\n")


def write_figure(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.2))
    colours = dict(zip(sorted({r["channels"] for r in rows}), ("tab:blue", "tab:orange", "tab:green", "tab:red")))
    markers = {"eps": "o", "x": "s", "v": "^"}
    for ax, key, label in (
        (axes[0], "gap_overall", "ShapesEval overall: continuous - discrete (higher: continuous ahead)"),
        (axes[1], "gap_fd", "shapes_fd: continuous - discrete (lower: continuous ahead)"),
    ):
        for r in rows:
            raster = r["variant"].endswith("raster")
            ax.scatter(
                r["ratio"],
                r[key],
                marker=markers.get(r["prediction"], "o"),
                s=25 + 12 * r["noise_draws"],
                facecolors="none" if raster else colours[r["channels"]],
                edgecolors=colours[r["channels"]],
                linewidths=1.5,
                label=f"{r['tokens']} x {r['channels']}, {'raster' if raster else 'random'}",
            )
            ax.annotate(
                r["run"].split("=")[-1], (r["ratio"], r[key]), fontsize=6, xytext=(4, 3), textcoords="offset points"
            )
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ratios = sorted({r["ratio"] for r in rows})
        ax.set_xticks(ratios, [f"{x:g}x" for x in ratios])
        ax.minorticks_off()
        ax.set_xlabel("head width / token channels")
        ax.set_title(label, fontsize=9)
        handles, labels = ax.get_legend_handles_labels()
        seen = dict(zip(labels, handles))
        ax.legend(seen.values(), seen.keys(), title="tokens x channels, order", fontsize=7, title_fontsize=7)
    fig.suptitle(
        "Continuous arms against the discrete arm of the same order at an equal budget "
        "(o: eps, s: x-prediction; size: noise draws; hollow: raster)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path, help="the sweep's results.csv")
    p.add_argument("--sweep", required=True, help="the sweep (name or YAML) that made it")
    p.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="ORDER=RUN",
        help="the discrete run to compare an order's continuous runs with (default: the sweep's one "
        "discrete run of that order)",
    )
    p.add_argument("--step", type=int, default=None, help="evaluated step (default: the last)")
    p.add_argument("--out", type=Path, required=True, help="folder for regime.md, regime.png, regime.json")
    args = p.parse_args(argv)
    refs = {}
    for item in args.reference:
        order, sep, run = item.partition("=")
        if not sep or order not in ("random", "raster"):
            p.error(f"--reference takes ORDER=RUN with ORDER random or raster, not {item!r}")
        refs[order] = run
    rows = regime_rows(args.results, args.sweep, refs or None, args.step)
    args.out.mkdir(parents=True, exist_ok=True)
    write_table(rows, args.out / "regime.md")
    write_figure(rows, args.out / "regime.png")
    (args.out / "regime.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(json.dumps({"rows": len(rows), "out": str(args.out)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
