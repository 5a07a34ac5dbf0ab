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
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from fluid.scaling.fit import linear_fit, pearson_interval, power_law_fit

METRICS = {"shapes_eval.overall": "ShapesEval overall", "shapes_fd": "shapes_fd", "fid": "FID"}
PAPER = {
    "loss_vs_params": "validation loss falls as a power law in model size for all four variants (Fig. 5)",
    "best_variant": "continuous tokens in random order are best on FID and GenEval at every size and keep "
                    "improving with scale (Fig. 6)",
    "correlation": "FID and GenEval track validation loss: Pearson 0.917 (FID) and -0.931 (GenEval) (Fig. 8)",
}


def _final_rows(rows: list[dict]) -> list[dict]:
    last: dict[str, dict] = {}
    for r in rows:
        if r.get("status") == "done" and (r["run"] not in last or r["step"] > last[r["run"]]["step"]):
            last[r["run"]] = r
    return list(last.values())


def _by(rows: list[dict], key: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        out[r[key]].append(r)
    return dict(sorted(out.items()))


def _points(rows: list[dict], x: str, y: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r[x], r[y]) for r in rows if r.get(y) is not None and r.get(x) is not None
           and not (isinstance(r[y], float) and math.isnan(r[y]))]
    pts.sort()
    return np.array([p[0] for p in pts], dtype=float), np.array([p[1] for p in pts], dtype=float)


def compute_fits(rows: list[dict]) -> dict:
    """Every fit of the study, as plain data."""
    final = _final_rows(rows)
    fits: dict = {"loss_vs_params": {}, "metric_vs_loss": {}, "best_at_largest": {}, "notes": []}
    for variant, rs in _by(final, "variant").items():
        x, y = _points(rs, "params", "val_loss")
        if len(set(x)) >= 2:
            fits["loss_vs_params"][variant] = power_law_fit(x, y).to_dict()
        else:
            fits["notes"].append(f"{variant}: fewer than two sizes, no loss-vs-size fit")
    # Correlations over every evaluated checkpoint (sizes and steps), as in the paper's Fig. 8.
    done = [r for r in rows if r.get("status") == "done"]
    groups = {v: rs for v, rs in _by(done, "variant").items()}
    for token_type in ("continuous", "discrete"):
        pooled = [r for r in done if r["variant"].startswith(token_type)]
        if len({r["variant"] for r in pooled}) > 1:
            groups[f"{token_type} (pooled)"] = pooled
    for metric in METRICS:
        per = {}
        for name, rs in groups.items():
            x, y = _points(rs, "val_loss", metric)
            if len(x) >= 3 and np.ptp(x) > 0:
                fit = linear_fit(x, y)
                lo, hi = pearson_interval(fit.pearson_r, len(x))
                per[name] = {**fit.to_dict(), "points": len(x), "r_ci95": [round(lo, 4), round(hi, 4)]}
        if per:
            fits["metric_vs_loss"][metric] = per
    # Which variant leads at the largest size present for every variant.
    sizes = _by(final, "variant")
    if sizes:
        for metric, better in (("shapes_eval.overall", max), ("shapes_fd", min), ("val_loss", None)):
            if better is None:
                continue
            top = {}
            for variant, rs in sizes.items():
                rs = [r for r in rs if r.get(metric) is not None]
                if rs:
                    big = max(rs, key=lambda r: r["params"])
                    top[variant] = {"params": big["params"], metric: big[metric]}
            if top:
                winner = better(top, key=lambda v: top[v][metric])
                fits["best_at_largest"][metric] = {"best": winner, "values": top}
    fits["targets"] = targets(rows, fits)
    return fits


# The committed study's targets: validation loss a power law in size (R^2), each metric
# tracking validation loss (|Pearson r|), and the paper's model best at the largest size.
TARGET_R2, TARGET_R = 0.9, 0.9
TRACKED = ("shapes_eval.overall", "shapes_fd")
FAMILY_PREFIX = "shapes_eval."


def _binomial_se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.25 / n) / n)  # never 0: a score of 0 of n is not exact


def targets(rows: list[dict], fits: dict) -> dict:
    """Each target, whether it is met, and the evidence that says why where it is not: the
    confidence interval of r, how many per-family ShapesEval scores sit at 0 (a floor flattens
    any correlation), and the sampling error of a ShapesEval score from its number of images."""
    done = [r for r in rows if r.get("status") == "done"]
    out: dict = {"loss_power_law": {}, "metric_tracks_loss": {}, "evidence": {}}
    for v, f in fits["loss_vs_params"].items():
        out["loss_power_law"][v] = {"r2": f["r2"], "met": f["r2"] >= TARGET_R2}
    for m in TRACKED:
        for v, f in fits["metric_vs_loss"].get(m, {}).items():
            if "pooled" not in v:
                out["metric_tracks_loss"].setdefault(m, {})[v] = {
                    "r": f["pearson_r"], "r_ci95": f["r_ci95"], "met": abs(f["pearson_r"]) >= TARGET_R,
                    "ci_reaches_target": max(abs(f["r_ci95"][0]), abs(f["r_ci95"][1])) >= TARGET_R}
    best = fits["best_at_largest"].get("shapes_eval.overall")
    if best:
        out["continuous_random_best"] = {"best": best["best"], "met": best["best"] == "continuous-random"}
    for v, rs in _by(done, "variant").items():
        fam = [r[k] for r in rs for k in r if k.startswith(FAMILY_PREFIX) and k.count(".") == 1
               and k not in ("shapes_eval.overall", "shapes_eval.images") and r[k] is not None]
        images = [r["shapes_eval.images"] for r in rs if r.get("shapes_eval.images")]
        big = max(rs, key=lambda r: (r["params"], r["step"]))
        ev = {"family_scores": len(fam), "family_scores_at_zero": sum(1 for x in fam if x == 0)}
        if images and big.get("shapes_eval.overall") is not None:
            ev["images_per_checkpoint"] = min(images)
            ev["largest_overall"] = big["shapes_eval.overall"]
            ev["largest_overall_se"] = round(_binomial_se(big["shapes_eval.overall"], min(images)), 4)
        out["evidence"][v] = ev
    return out


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
    final = _final_rows(rows)
    by_variant = _by(final, "variant")
    colors = {v: f"C{i}" for i, v in enumerate(sorted({r["variant"] for r in rows}))}
    files = {}

    # Fig. 5: loss vs parameters.
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, token_type in zip(axes, ("continuous", "discrete")):
        for v, rs in by_variant.items():
            if not v.startswith(token_type):
                continue
            x, y = _points(rs, "params", "val_loss")
            ax.plot(x, y, "o", color=colors[v], label=v)
            if v in fits["loss_vs_params"]:
                from fluid.scaling.fit import power_law_fit

                law = power_law_fit(x, y)
                grid = np.geomspace(x.min() * 0.8, x.max() * 1.25, 50)
                lo, hi = law.band(grid)
                ax.plot(grid, law.predict(grid), "-", color=colors[v], alpha=0.8,
                        label=f"  slope {law.exponent:.3f}, R$^2$ {law.line.r2:.2f}")
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
                x, y = _points(rs, "params", m)
                n = [r.get("shapes_eval.images") for r in sorted(rs, key=lambda r: r["params"]) if r.get(m) is not None]
                if len(x) and m == "shapes_eval.overall" and all(n):  # with its binomial sampling error
                    ax.errorbar(x, y, yerr=[_binomial_se(p, k) for p, k in zip(y, n)], fmt="o-", color=colors[v],
                                capsize=3, label=v)
                elif len(x):
                    ax.plot(x, y, "o-", color=colors[v], label=v)
            _style(ax, "parameters", METRICS[m])
            _legend(ax)
        files["metrics_vs_params"] = _save(fig, out, "fig6-metrics-vs-params.png",
                                           "Evaluation metrics vs model size (paper Fig. 6)")

    # Fig. 7: loss and the first metric vs steps and vs compute, one line per run.
    ys = ["val_loss"] + present[:1]
    fig, axes = plt.subplots(len(ys), 2, figsize=(10, 3.6 * len(ys)), squeeze=False)
    runs = _by([r for r in rows if r.get("status") == "done"], "run")
    for i, y in enumerate(ys):
        for j, x in enumerate(("step", "train_flops")):
            ax = axes[i][j]
            for name, rs in runs.items():
                px, py = _points(rs, x, y)
                if len(px):
                    ax.plot(px, py, "o-", color=colors[rs[0]["variant"]], alpha=0.7, ms=3)
            _style(ax, "training steps" if x == "step" else "training compute (FLOPs)", y, logy=y == "val_loss")
    handles = [plt.Line2D([], [], color=c, marker="o", label=v) for v, c in colors.items()]
    axes[0][0].legend(handles=handles, fontsize=7)
    files["vs_steps_compute"] = _save(fig, out, "fig7-vs-steps-and-compute.png",
                                      "Loss and metrics vs training steps and compute (paper Fig. 7)")

    # Fig. 8: metrics vs validation loss (continuous variants: their loss is on one scale).
    if present:
        fig, axes = plt.subplots(2, len(present), figsize=(5 * len(present), 7.5), squeeze=False)
        for row, token_type in enumerate(("continuous", "discrete")):
            for ax, m in zip(axes[row], present):
                for name, rs in runs.items():
                    v = rs[0]["variant"]
                    if not v.startswith(token_type):
                        continue
                    px, py = _points(rs, "val_loss", m)
                    ax.plot(px, py, "o", color=colors[v], ms=4)
                for v, fit in fits["metric_vs_loss"].get(m, {}).items():
                    if not v.startswith(token_type) or v not in colors:
                        continue
                    rs = [r for r in rows if r["variant"] == v and r.get("status") == "done"]
                    px, _ = _points(rs, "val_loss", m)
                    grid = np.linspace(px.min(), px.max(), 20)
                    ax.plot(grid, fit["intercept"] + fit["slope"] * grid, "-", color=colors[v],
                            label=f"{v}: r = {fit['pearson_r']:.3f}")
                _style(ax, f"validation loss ({token_type})", METRICS[m], logx=False)
                _legend(ax)
        files["metrics_vs_loss"] = _save(fig, out, "fig8-metrics-vs-loss.png", "Metrics vs validation loss (paper Fig. 8)")
    return files


# ----------------------------------------------------------------------------- report


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def write_report(rows: list[dict], fits: dict, files: dict[str, str], out: Path, sweep_name: str, command: str) -> Path:
    final = sorted(_final_rows(rows), key=lambda r: (r["variant"], r["params"]))
    lines = [f"# Scaling study: `{sweep_name}`", "", f"Made by `{command}`.", "",
             "Parameters count the trained generator (text aligner, backbone, token embedding, output head); "
             "the frozen text encoder and the tokenizer are excluded, as in the paper. Training FLOPs come "
             "from `fluid.config.flops_per_image` (checked against `torch.utils.flop_counter` by the tests).", "",
             "## Final checkpoints", "",
             "| run | variant | params | steps | images | train FLOPs | val loss | ShapesEval | shapes_fd |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in final:
        lines.append(f"| {r['run']} | {r['variant']} | {r['params'] / 1e6:.2f}M | {r['step']} | {r['images']} | "
                     f"{r['train_flops']:.2e} | {_fmt(r.get('val_loss'))} | {_fmt(r.get('shapes_eval.overall'), 3)} | "
                     f"{_fmt(r.get('shapes_fd'), 4)} |")
    failed = [r for r in rows if r.get("status") not in (None, "done")]
    if failed:
        lines += ["", "Not finished: " + "; ".join(f"{r['run']} ({r['status']}: {r.get('error', '')})" for r in failed)]
    lines += ["", "## Validation loss vs size", "", f"![]({files.get('loss_vs_params', '')})", "",
              "| variant | exponent | R^2 | sizes |", "| --- | --- | --- | --- |"]
    for v, f in fits["loss_vs_params"].items():
        lines.append(f"| {v} | {f['exponent']:.4f} ± {f['exponent_stderr']:.4f} | {f['r2']:.3f} | {f['n']} |")
    for m, per in fits["metric_vs_loss"].items():
        lines += ["", f"## {METRICS[m]} vs validation loss", "",
                  "| variant | Pearson r | 95% interval | p | slope | points |", "| --- | --- | --- | --- | --- | --- |"]
        for v, f in per.items():
            ci = f.get("r_ci95", [float("nan")] * 2)
            lines.append(f"| {v} | {f['pearson_r']:.3f} | [{ci[0]:.2f}, {ci[1]:.2f}] | {_fmt(f['p_value'], 2)} | "
                         f"{f['slope']:.4g} | {f['points']} |")
    for key in ("metrics_vs_params", "vs_steps_compute", "metrics_vs_loss"):
        if key in files:
            lines += ["", f"![]({files[key]})"]
    lines += ["", "## Against the paper", ""]
    r2 = {v: f["r2"] for v, f in fits["loss_vs_params"].items()}
    agree = r2 and all(x >= 0.9 for x in r2.values())
    lines.append(f"- Paper: {PAPER['loss_vs_params']}. Here: R^2 "
                 + ", ".join(f"{v} {x:.3f}" for v, x in r2.items())
                 + (" — agrees (all >= 0.9)." if agree else " — not all >= 0.9; see the notes below."))
    best = fits["best_at_largest"].get("shapes_eval.overall")
    if best:
        lines.append(f"- Paper: {PAPER['best_variant']}. Here, at the largest size: best ShapesEval is "
                     f"{best['best']} (" + ", ".join(f"{v} {d['shapes_eval.overall']:.3f}" for v, d in best["values"].items()) + ").")
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
        lines += ["", "## Time", "", f"Summed over the {len(spent)} runs (one process each): training {train / 60:.1f} min "
                  f"(data pool included), evaluation {ev / 60:.1f} min; the slowest run "
                  f"{max(spent, key=lambda k: sum(spent[k]))} took {max(sum(x) for x in spent.values()) / 60:.1f} min."]
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
        lines.append(f"| loss vs size: power law, R^2 >= {TARGET_R2} | {v} | R^2 {d['r2']:.3f} | {yes(d['met'])} |")
    for m, per in t["metric_tracks_loss"].items():
        for v, d in per.items():
            lines.append(f"| {METRICS[m]} tracks loss, abs(r) >= {TARGET_R} | {v} | r {d['r']:.3f} "
                         f"[{d['r_ci95'][0]:.2f}, {d['r_ci95'][1]:.2f}] | {yes(d['met'])} |")
    if "continuous_random_best" in t:
        d = t["continuous_random_best"]
        lines.append(f"| continuous-random best ShapesEval at the largest size | - | best: {d['best']} | {yes(d['met'])} |")
    missed = [(m, v) for m, per in t["metric_tracks_loss"].items() for v, d in per.items() if not d["met"]]
    if missed or not t.get("continuous_random_best", {"met": True})["met"]:
        lines += ["", "Evidence where a target is not met (computed from the results):", ""]
        for m, v in missed:
            d = t["metric_tracks_loss"][m][v]
            lines.append(f"- {METRICS[m]}, {v}: r {d['r']:.3f}, 95% interval [{d['r_ci95'][0]:.2f}, {d['r_ci95'][1]:.2f}]"
                         + (f", which reaches {TARGET_R}: the points cannot tell this r from the target."
                            if d["ci_reaches_target"] else "."))
        for v, ev in t["evidence"].items():
            if "images_per_checkpoint" in ev:
                lines.append(f"- {v}: {ev['family_scores_at_zero']} of {ev['family_scores']} per-family ShapesEval scores "
                             f"are 0 (a floor: those families do not move with loss); {ev['images_per_checkpoint']} "
                             f"images per checkpoint, so the largest model's {ev['largest_overall']:.3f} has a "
                             f"sampling error of ±{ev['largest_overall_se']:.3f} (binomial).")
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
