"""From a sweep's ``results.json`` to the paper's figures, ``fits.json`` and ``report.md``.

* Fig. 5: validation loss against parameters, log-log, a least-squares power law per variant
  with its 95% confidence band;
* Fig. 6: ShapesEval, ``shapes_fd`` (and FID where measured) against parameters;
* Fig. 7: validation loss and metrics against training steps and training compute;
* Fig. 8: each metric against validation loss, a linear fit and Pearson r per variant, and
  pooled over the variants of one token type (continuous and discrete losses are on
  different scales, so they are never pooled together).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fluid.scaling.findings import (
    METRICS,
    MIN_FIT_SIZES,
    PAPER,
    TARGET_R,
    TARGET_R2,
    binomial_se,
    compute_fits,
    final_rows,
    group_by,
    points,
)

# ----------------------------------------------------------------------------- figures


def _style(ax, xlabel: str, ylabel: str, logx: bool = True, logy: bool = False):
    from matplotlib.ticker import NullFormatter

    if logx:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # labels at 2x, 3x ... of a decade overlap
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:  # an empty panel (no variant of that kind) gets none
        ax.legend(fontsize=7)


def _save(fig, out: Path, name: str, title: str) -> str:
    import matplotlib.pyplot as plt

    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def write_figures(rows: list[dict], fits: dict, out: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    final = final_rows(rows)
    by_variant = group_by(final, "variant")
    colors = {v: f"C{i}" for i, v in enumerate(sorted({r["variant"] for r in rows}))}
    files = {}

    # Fig. 5: loss vs parameters.
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, token_type in zip(axes, ("continuous", "discrete")):
        for v, rs in by_variant.items():
            if not v.startswith(token_type):
                continue
            x, y = points(rs, "params", "val_loss")
            ax.plot(x, y, "o", color=colors[v], label=v)
            if v in fits["loss_vs_params"]:
                from fluid.scaling.fit import power_law_fit

                law = power_law_fit(x, y)
                grid = np.geomspace(x.min() * 0.8, x.max() * 1.25, 50)
                lo, hi = law.band(grid)
                ax.plot(
                    grid,
                    law.predict(grid),
                    "-",
                    color=colors[v],
                    alpha=0.8,
                    label=f"  slope {law.exponent:.3f}, R$^2$ {law.line.r2:.2f}",
                )
                ax.fill_between(grid, lo, hi, color=colors[v], alpha=0.15)
        _style(ax, "parameters (trained generator)", "validation loss", logy=True)
        ax.set_title(f"{token_type} tokens")
        _legend(ax)
    files["loss_vs_params"] = _save(fig, out, "fig5-loss-vs-params.png", "Validation loss vs model size (paper Fig. 5)")

    # Fig. 6: metrics vs parameters.
    present = [m for m in METRICS if any(r.get(m) is not None for r in final)]
    if present:
        fig, axes = plt.subplots(1, len(present), figsize=(5 * len(present), 4), squeeze=False)
        for ax, m in zip(axes[0], present):
            for v, rs in by_variant.items():
                x, y = points(rs, "params", m)
                n = [r.get("shapes_eval.images") for r in sorted(rs, key=lambda r: r["params"]) if r.get(m) is not None]
                if len(x) and m == "shapes_eval.overall" and all(n):  # with its binomial sampling error
                    ax.errorbar(
                        x,
                        y,
                        yerr=[binomial_se(p, k) for p, k in zip(y, n)],
                        fmt="o-",
                        color=colors[v],
                        capsize=3,
                        label=v,
                    )
                elif len(x):
                    ax.plot(x, y, "o-", color=colors[v], label=v)
            _style(ax, "parameters", METRICS[m])
            _legend(ax)
        files["metrics_vs_params"] = _save(
            fig, out, "fig6-metrics-vs-params.png", "Evaluation metrics vs model size (paper Fig. 6)"
        )

    # Fig. 7: loss and the first metric vs steps and vs compute, one line per run.
    ys = ["val_loss"] + present[:1]
    fig, axes = plt.subplots(len(ys), 2, figsize=(10, 3.6 * len(ys)), squeeze=False)
    runs = group_by([r for r in rows if r.get("status") == "done"], "run")
    for i, y in enumerate(ys):
        for j, x in enumerate(("step", "train_flops")):
            ax = axes[i][j]
            for rs in runs.values():
                px, py = points(rs, x, y)
                if len(px):
                    ax.plot(px, py, "o-", color=colors[rs[0]["variant"]], alpha=0.7, ms=3)
            _style(ax, "training steps" if x == "step" else "training compute (FLOPs)", y, logy=y == "val_loss")
    handles = [plt.Line2D([], [], color=c, marker="o", label=v) for v, c in colors.items()]
    axes[0][0].legend(handles=handles, fontsize=7)
    files["vs_steps_compute"] = _save(
        fig, out, "fig7-vs-steps-and-compute.png", "Loss and metrics vs training steps and compute (paper Fig. 7)"
    )

    # Fig. 8: metrics vs validation loss (continuous variants: their loss is on one scale).
    if present:
        fig, axes = plt.subplots(2, len(present), figsize=(5 * len(present), 7.5), squeeze=False)
        for row, token_type in enumerate(("continuous", "discrete")):
            for ax, m in zip(axes[row], present):
                for rs in runs.values():
                    v = rs[0]["variant"]
                    if not v.startswith(token_type):
                        continue
                    px, py = points(rs, "val_loss", m)
                    ax.plot(px, py, "o", color=colors[v], ms=4)
                for v, fit in fits["metric_vs_loss"].get(m, {}).items():
                    if not v.startswith(token_type) or v not in colors:
                        continue
                    rs = [r for r in rows if r["variant"] == v and r.get("status") == "done"]
                    px, _ = points(rs, "val_loss", m)
                    grid = np.linspace(px.min(), px.max(), 20)
                    ax.plot(
                        grid,
                        fit["intercept"] + fit["slope"] * grid,
                        "-",
                        color=colors[v],
                        label=f"{v}: r = {fit['pearson_r']:.3f}",
                    )
                _style(ax, f"validation loss ({token_type})", METRICS[m], logx=False)
                _legend(ax)
        files["metrics_vs_loss"] = _save(
            fig, out, "fig8-metrics-vs-loss.png", "Metrics vs validation loss (paper Fig. 8)"
        )
    return files


# ----------------------------------------------------------------------------- report


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def write_report(rows: list[dict], fits: dict, files: dict[str, str], out: Path, sweep_name: str, command: str) -> Path:
    final = sorted(final_rows(rows), key=lambda r: (r["variant"], r["params"]))
    lines = [
        f"# Scaling study: `{sweep_name}`",
        "",
        f"Made by `{command}`.",
        "",
        "Parameters count the trained generator (text aligner, backbone, token embedding, output head); "
        "the frozen text encoder and the tokenizer are excluded, as in the paper. Training FLOPs come "
        "from `fluid.scaling.flops.flops_per_image` (checked against `torch.utils.flop_counter` by the tests).",
        "",
        "## Final checkpoints",
        "",
        "| run | variant | params | steps | images | train FLOPs | val loss | ShapesEval | shapes_fd |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in final:
        lines.append(
            f"| {r['run']} | {r['variant']} | {r['params'] / 1e6:.2f}M | {r['step']} | {r['images']} | "
            f"{r['train_flops']:.2e} | {_fmt(r.get('val_loss'))} | {_fmt(r.get('shapes_eval.overall'), 3)} | "
            f"{_fmt(r.get('shapes_fd'), 4)} |"
        )
    failed = [r for r in rows if r.get("status") not in (None, "done")]
    if failed:
        lines += ["", "Not finished: " + "; ".join(f"{r['run']} ({r['status']}: {r.get('error', '')})" for r in failed)]
    lines += [
        "",
        "## Validation loss vs size",
        "",
        f"![]({files.get('loss_vs_params', '')})",
        "",
        "| variant | exponent | R^2 | sizes |",
        "| --- | --- | --- | --- |",
    ]
    for v, f in fits["loss_vs_params"].items():
        lines.append(f"| {v} | {f['exponent']:.4f} ± {f['exponent_stderr']:.4f} | {f['r2']:.3f} | {f['n']} |")
    for m, per in fits["metric_vs_loss"].items():
        lines += [
            "",
            f"## {METRICS[m]} vs validation loss",
            "",
            "| variant | Pearson r | 95% interval | p | slope | points |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for v, f in per.items():
            ci = f.get("r_ci95", [float("nan")] * 2)
            lines.append(
                f"| {v} | {f['pearson_r']:.3f} | [{ci[0]:.2f}, {ci[1]:.2f}] | {_fmt(f['p_value'], 2)} | "
                f"{f['slope']:.4g} | {f['points']} |"
            )
    for key in ("metrics_vs_params", "vs_steps_compute", "metrics_vs_loss"):
        if key in files:
            lines += ["", f"![]({files[key]})"]
    lines += ["", "## Against the paper", ""]
    r2 = {v: f["r2"] for v, f in fits["loss_vs_params"].items()}
    few = [v for v, f in fits["loss_vs_params"].items() if f["n"] < MIN_FIT_SIZES]
    agree = r2 and all(x >= 0.9 for x in r2.values())
    if few:
        verdict = f" — too early to say: {', '.join(few)} with fewer than {MIN_FIT_SIZES} sizes (two fit exactly)."
    else:
        verdict = " — agrees (all >= 0.9)." if agree else " — not all >= 0.9; see the notes below."
    lines.append(
        f"- Paper: {PAPER['loss_vs_params']}. Here: R^2 " + ", ".join(f"{v} {x:.3f}" for v, x in r2.items()) + verdict
    )
    best = fits["best_at_largest"].get("shapes_eval.overall")
    if best:
        lines.append(
            f"- Paper: {PAPER['best_variant']}. Here, at the largest size: best ShapesEval is "
            f"{best['best']} ("
            + ", ".join(f"{v} {d['shapes_eval.overall']:.3f}" for v, d in best["values"].items())
            + ")."
        )
    corr = fits["metric_vs_loss"]
    if corr:
        parts = []
        for m, per in corr.items():
            parts.append(f"{METRICS[m]}: " + ", ".join(f"{v} {f['pearson_r']:.3f}" for v, f in per.items()))
        lines.append(f"- Paper: {PAPER['correlation']}. Here: " + "; ".join(parts) + ".")
    lines += _target_lines(fits.get("targets", {}))
    spent = {}
    for r in rows:
        if r.get("status") == "done" and "train_s" in r:
            spent[r["run"]] = (r["train_s"], r.get("eval_s", 0.0))
    if spent:
        train, ev = sum(t for t, _ in spent.values()), sum(e for _, e in spent.values())
        lines += [
            "",
            "## Time",
            "",
            f"Summed over the {len(spent)} runs (one process each): training {train / 60:.1f} min "
            f"(data pool included), evaluation {ev / 60:.1f} min; the slowest run "
            f"{max(spent, key=lambda k: sum(spent[k]))} took {max(sum(x) for x in spent.values()) / 60:.1f} min.",
        ]
    if fits["notes"]:
        lines += ["", "Notes: " + "; ".join(fits["notes"])]
    notes = out / "notes.md"  # written by hand, beside the numbers: kept when the report is redone
    if notes.exists():
        lines += ["", notes.read_text().strip()]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _target_lines(t: dict) -> list[str]:
    if not t:
        return []
    yes = lambda ok: "met" if ok else "**not met**"  # noqa: E731
    lines = ["", "## Targets", "", "| target | variant | value | |", "| --- | --- | --- | --- |"]
    for v, d in t["loss_power_law"].items():
        few = d.get("sizes", MIN_FIT_SIZES) < MIN_FIT_SIZES
        verdict = f"not yet: {d['sizes']} sizes (a fit needs {MIN_FIT_SIZES})" if few else yes(d["met"])
        lines.append(f"| loss vs size: power law, R^2 >= {TARGET_R2} | {v} | R^2 {d['r2']:.3f} | {verdict} |")
    for m, per in t["metric_tracks_loss"].items():
        for v, d in per.items():
            lines.append(
                f"| {METRICS[m]} tracks loss, abs(r) >= {TARGET_R} | {v} | r {d['r']:.3f} "
                f"[{d['r_ci95'][0]:.2f}, {d['r_ci95'][1]:.2f}] | {yes(d['met'])} |"
            )
    if "continuous_random_best" in t:
        d = t["continuous_random_best"]
        lines.append(
            f"| continuous-random best ShapesEval at the largest size | - | best: {d['best']} | {yes(d['met'])} |"
        )
    missed = [(m, v) for m, per in t["metric_tracks_loss"].items() for v, d in per.items() if not d["met"]]
    if missed or not t.get("continuous_random_best", {"met": True})["met"]:
        lines += ["", "Evidence where a target is not met (computed from the results):", ""]
        for m, v in missed:
            d = t["metric_tracks_loss"][m][v]
            lines.append(
                f"- {METRICS[m]}, {v}: r {d['r']:.3f}, 95% interval [{d['r_ci95'][0]:.2f}, {d['r_ci95'][1]:.2f}]"
                + (
                    f", which reaches {TARGET_R}: the points cannot tell this r from the target."
                    if d["ci_reaches_target"]
                    else "."
                )
            )
        for v, ev in t["evidence"].items():
            if "images_per_checkpoint" in ev:
                lines.append(
                    f"- {v}: {ev['family_scores_at_zero']} of {ev['family_scores']} per-family ShapesEval scores "
                    f"are 0 (a floor: those families do not move with loss); {ev['images_per_checkpoint']} "
                    f"images per checkpoint, so the largest model's {ev['largest_overall']:.3f} has a "
                    f"sampling error of ±{ev['largest_overall_se']:.3f} (binomial)."
                )
    return lines


def analyze(out: str | Path, sweep_name: str = "", command: str = "") -> dict:
    """Read ``<out>/results.json``; write ``fits.json``, the figures and ``report.md``."""
    out = Path(out)
    rows = json.loads((out / "results.json").read_text())
    fits = compute_fits(rows)
    files = write_figures(rows, fits, out)
    fits["figures"] = files
    (out / "fits.json").write_text(json.dumps(fits, indent=2) + "\n")
    write_report(rows, fits, files, out, sweep_name, command)
    return fits
