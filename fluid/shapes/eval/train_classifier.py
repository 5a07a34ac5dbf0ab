"""Training the learned kind reader (:mod:`fluid.shapes.eval.classifier`) on the patches of
:mod:`fluid.shapes.eval.classifier_data`::

    python -m fluid.shapes.eval.train_classifier --out fluid/assets/eval/shape-classifier.safetensors
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from fluid.files import save_safetensors
from fluid.shapes.eval.classifier import CLASSES, DEFAULT_PATH, ShapeClassifier


def _file_metadata(path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # noqa: BLE001 -- an unreadable file is simply not reused
        return {}


def train(
    out: str | Path,
    epochs: int = 12,
    batch_size: int = 256,
    lr: float = 2e-3,
    seed: int = 0,
    width: int = 16,
    images: dict | None = None,
    patches: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Build the training patches (``fluid.shapes.eval.classifier_data``; ``images`` scenes per
    distortion), fit, save; returns a summary. ``patches``: a file to keep the patches in
    (read if it exists, written otherwise), to retrain without rebuilding them."""
    from tqdm.auto import tqdm

    from fluid.shapes.eval.classifier_data import DEFAULT_IMAGES, training_patches

    t0 = time.perf_counter()
    images = images or DEFAULT_IMAGES
    # The patches file is reused only if it was built from the same scenes and seed.
    made_by = {
        "images": json.dumps({getattr(k, "value", k): v for k, v in images.items()}, sort_keys=True),
        "seed": str(seed),
    }
    if patches is not None and Path(patches).is_file() and _file_metadata(patches) == made_by:
        data = load_file(str(patches))
        x, y = data["x"], data["y"]
    else:
        x, y = training_patches(images, seed=seed, progress=progress)  # (n, 2, P, P), (n,)
        if patches is not None:
            save_safetensors({"x": x.contiguous(), "y": y}, patches, metadata=made_by)
    t_data = time.perf_counter() - t0
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=g)
    n_val = max(1, len(y) // 20)
    val, tr = perm[:n_val], perm[n_val:]
    torch.manual_seed(seed)
    model = ShapeClassifier(width)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(tr) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    bar = tqdm(total=steps, desc="shape classifier", disable=not progress)
    for _ in range(epochs):
        order = tr[torch.randperm(len(tr), generator=g)]
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            xb = x[idx]
            flip = torch.rand(len(idx), generator=g) < 0.5  # every kind is mirror-symmetric
            xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(-1), xb)
            loss = F.cross_entropy(model(xb), y[idx], label_smoothing=0.02)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    with torch.no_grad():
        acc = float((model(x[val]).argmax(-1) == y[val]).float().mean())
    info = {
        "patches": len(y),
        "images": {getattr(k, "value", k): v for k, v in images.items()},
        "epochs": epochs,
        "seed": seed,
        "val_patch_accuracy": round(acc, 4),
        "class_counts": torch.bincount(y, minlength=len(CLASSES)).tolist(),
        "data_s": round(t_data, 1),
        "train_s": round(time.perf_counter() - t0 - t_data, 1),
    }
    model.save(out, info)
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="train the shapes kind classifier used by the detector")
    p.add_argument("--out", default=str(DEFAULT_PATH))
    p.add_argument("--patches", default=None, help="keep the training patches in this file (reused if it exists)")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(json.dumps(train(args.out, args.epochs, seed=args.seed, patches=args.patches)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
