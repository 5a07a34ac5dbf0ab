"""What a sweep's rows show: a power law of validation loss in parameters per variant, each
metric against parameters and against validation loss (linear fit, Pearson r with its
interval), and the paper's three claims checked against them (``targets``). The math is
:mod:`fluid.scaling.fit`; the figures and the report are :mod:`fluid.scaling.analysis`."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from fluid.scaling.fit import linear_fit, pearson_interval, power_law_fit

METRICS = {"shapes_eval.overall": "ShapesEval overall", "shapes_fd": "shapes_fd", "fid": "FID"}
PAPER = {
    "loss_vs_params": "validation loss falls as a power law in model size for all four variants (Fig. 5)",
    "best_variant": "continuous tokens in random order are best on FID and GenEval at every size and keep "
    "improving with scale (Fig. 6)",
    "correlation": "FID and GenEval track validation loss: Pearson 0.917 (FID) and -0.931 (GenEval) (Fig. 8)",
}


def final_rows(rows: list[dict]) -> list[dict]:
    last: dict[str, dict] = {}
    for r in rows:
        if r.get("status") == "done" and (r["run"] not in last or r["step"] > last[r["run"]]["step"]):
            last[r["run"]] = r
    return list(last.values())


def group_by(rows: list[dict], key: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        out[r[key]].append(r)
    return dict(sorted(out.items()))


def points(rows: list[dict], x: str, y: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [
        (r[x], r[y])
        for r in rows
        if r.get(y) is not None and r.get(x) is not None and not (isinstance(r[y], float) and math.isnan(r[y]))
    ]
    pts.sort()
    return np.array([p[0] for p in pts], dtype=float), np.array([p[1] for p in pts], dtype=float)


def compute_fits(rows: list[dict]) -> dict:
    """Every fit of the study, as plain data."""
    final = final_rows(rows)
    fits: dict = {"loss_vs_params": {}, "metric_vs_loss": {}, "best_at_largest": {}, "notes": []}
    for variant, rs in group_by(final, "variant").items():
        x, y = points(rs, "params", "val_loss")
        if len(set(x)) >= 2:
            fits["loss_vs_params"][variant] = power_law_fit(x, y).to_dict()
        else:
            fits["notes"].append(f"{variant}: fewer than two sizes, no loss-vs-size fit")
    # Correlations over every evaluated checkpoint (sizes and steps), as in the paper's Fig. 8.
    done = [r for r in rows if r.get("status") == "done"]
    groups = {v: rs for v, rs in group_by(done, "variant").items()}
    for token_type in ("continuous", "discrete"):
        pooled = [r for r in done if r["variant"].startswith(token_type)]
        if len({r["variant"] for r in pooled}) > 1:
            groups[f"{token_type} (pooled)"] = pooled
    for metric in METRICS:
        per = {}
        for name, rs in groups.items():
            x, y = points(rs, "val_loss", metric)
            if len(x) >= 3 and np.ptp(x) > 0:
                fit = linear_fit(x, y)
                lo, hi = pearson_interval(fit.pearson_r, len(x))
                per[name] = {**fit.to_dict(), "points": len(x), "r_ci95": [round(lo, 4), round(hi, 4)]}
        if per:
            fits["metric_vs_loss"][metric] = per
    # Which variant leads at the largest size present for every variant.
    sizes = group_by(final, "variant")
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


MIN_FIT_SIZES = 3  # sizes a loss-vs-size fit needs before its R^2 says anything


def binomial_se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.25 / n) / n)  # never 0: a score of 0 of n is not exact


def targets(rows: list[dict], fits: dict) -> dict:
    """Each target, whether it is met, and the evidence that says why where it is not: the
    confidence interval of r, how many per-family ShapesEval scores sit at 0 (a floor flattens
    any correlation), and the sampling error of a ShapesEval score from its number of images."""
    done = [r for r in rows if r.get("status") == "done"]
    out: dict = {"loss_power_law": {}, "metric_tracks_loss": {}, "evidence": {}}
    for v, f in fits["loss_vs_params"].items():
        # Two sizes fit any power law exactly: the target needs MIN_FIT_SIZES at least.
        out["loss_power_law"][v] = {
            "r2": f["r2"],
            "sizes": f["n"],
            "met": f["r2"] >= TARGET_R2 and f["n"] >= MIN_FIT_SIZES,
        }
    for m in TRACKED:
        for v, f in fits["metric_vs_loss"].get(m, {}).items():
            if "pooled" not in v:
                out["metric_tracks_loss"].setdefault(m, {})[v] = {
                    "r": f["pearson_r"],
                    "r_ci95": f["r_ci95"],
                    "met": abs(f["pearson_r"]) >= TARGET_R,
                    "ci_reaches_target": max(abs(f["r_ci95"][0]), abs(f["r_ci95"][1])) >= TARGET_R,
                }
    best = fits["best_at_largest"].get("shapes_eval.overall")
    if best:
        out["continuous_random_best"] = {"best": best["best"], "met": best["best"] == "continuous-random"}
    for v, rs in group_by(done, "variant").items():
        fam = [
            r[k]
            for r in rs
            for k in r
            if k.startswith(FAMILY_PREFIX)
            and k.count(".") == 1
            and k not in ("shapes_eval.overall", "shapes_eval.images")
            and r[k] is not None
        ]
        images = [r["shapes_eval.images"] for r in rs if r.get("shapes_eval.images")]
        big = max(rs, key=lambda r: (r["params"], r["step"]))
        ev = {"family_scores": len(fam), "family_scores_at_zero": sum(1 for x in fam if x == 0)}
        if images and big.get("shapes_eval.overall") is not None:
            ev["images_per_checkpoint"] = min(images)
            ev["largest_overall"] = big["shapes_eval.overall"]
            ev["largest_overall_se"] = round(binomial_se(big["shapes_eval.overall"], min(images)), 4)
        out["evidence"][v] = ev
    return out
