"""A feature network of ours for the built-in data, and the "shapes Frechet distance".

``shapes_fd`` is the Frechet distance between generated images and real ``shapes`` renders
in the 64-d feature space of ``ShapesFeatureNet``, a small CNN trained here on ``shapes``.
It plays FID's role for the built-in data, but it is NOT FID: the features are not
Inception's, and its values are comparable only with other ``shapes_fd`` values computed
with the same network (its identity is recorded next to every value) and the same number
of images (the distance is biased upwards for small samples: report the real-vs-real
floor, ``shapes_fd_real``, next to it).

What the network learns, from a render (clean, or blurred with noise so that the features
describe content more than sharpness): how many objects of each kind there are (0-4 each),
which colours are present, the caption's family, and which cells of a 4 x 4 grid hold the
centre of an object of each kind. Its 64-d penultimate layer is the feature.

Train (CPU, ~3 minutes on one slow core; writes ~0.75 MB)::

    python -m fluid.shapes.eval.features --out fluid/assets/eval/shapes-features.safetensors
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

from fluid.files import save_safetensors
from fluid.shapes.dataset import ShapesDataset
from fluid.shapes.scenes import COLORS, FAMILIES, KINDS
from fluid.tokenizers.base import weights_hash

RESOLUTION = 64  # the network's input side; other sizes are resized to it
FEATURE_DIM = 64
GRID = 4  # the layout target's grid side
MAX_COUNT = 4
DEFAULT_PATH = Path(__file__).resolve().parents[2] / "assets" / "eval" / "shapes-features.safetensors"
FORMAT = "fluid-shapes-features/1"


class ShapesFeatureNet(nn.Module):
    """Images (B, 3, H, W) in [-1, 1] -> features (B, 64); ``heads`` give the training targets."""

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.trunk = nn.Sequential(
            nn.Conv2d(3, w, 3, stride=2, padding=1),
            nn.ReLU(),  # (B, w, 32, 32)
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),
            nn.ReLU(),  # (B, 2w, 16, 16)
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1),
            nn.ReLU(),  # (B, 4w, 8, 8)
            nn.Conv2d(4 * w, 4 * w, 3, stride=2, padding=1),
            nn.ReLU(),  # (B, 4w, 4, 4)
            nn.Flatten(),  # (B, 4w * 16): positions matter, so no global pooling
            nn.Linear(4 * w * 16, FEATURE_DIM),  # (B, 64): the features
        )
        n_out = len(KINDS) * (MAX_COUNT + 1) + len(COLORS) + len(FAMILIES) + len(KINDS) * GRID * GRID
        self.heads = nn.Linear(FEATURE_DIM, n_out)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != RESOLUTION or images.shape[-2] != RESOLUTION:
            images = F.interpolate(images, size=(RESOLUTION, RESOLUTION), mode="bilinear", antialias=True)
        return self.trunk(images)

    def identity(self) -> str:
        return f"shapes-features:{weights_hash(self)}"


class ShapesFeatures:
    """The feature extractor for ``shapes_fd``: images (B, 3, H, W) -> (B, 64) float32."""

    dim = FEATURE_DIM

    def __init__(self, net: ShapesFeatureNet, device: str | torch.device = "cpu", batch_size: int = 256):
        self.net, self.device, self.batch_size = net.eval().to(device), torch.device(device), batch_size

    def identity(self) -> str:
        return self.net.identity()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = [
            self.net(images[i : i + self.batch_size].float().to(self.device)).cpu()
            for i in range(0, len(images), self.batch_size)
        ]
        return torch.cat(out)


def load_shapes_features(path: str | Path | None = None, device: str | torch.device = "cpu") -> ShapesFeatures:
    path = Path(path) if path is not None else DEFAULT_PATH
    if not path.is_file():
        raise FileNotFoundError(
            f"shapes feature network {path} does not exist; train it with "
            f"`python -m fluid.shapes.eval.features --out {path}`"
        )
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a shapes feature network (format {meta.get('format')!r}, expected {FORMAT!r})")
    net = ShapesFeatureNet(int(meta["width"]))
    net.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return ShapesFeatures(net.requires_grad_(False), device)


# ----------------------------------------------------------------------------- training


def targets(specs) -> dict[str, torch.Tensor]:
    """Training targets of a batch of SceneSpecs: counts (B, kinds) in 0..4, colours (B, 6)
    0/1, family (B,), layout (B, kinds, 16) 0/1."""
    B = len(specs)
    counts = torch.zeros(B, len(KINDS), dtype=torch.long)
    colors = torch.zeros(B, len(COLORS))
    layout = torch.zeros(B, len(KINDS), GRID * GRID)
    names = list(COLORS)
    for b, s in enumerate(specs):
        for o in s.objects:
            k = KINDS.index(o.kind)
            counts[b, k] += 1
            colors[b, names.index(o.color)] = 1
            cell = min(int(o.cy * GRID), GRID - 1) * GRID + min(int(o.cx * GRID), GRID - 1)
            layout[b, k, cell] = 1
    family = torch.tensor([FAMILIES.index(s.family) for s in specs])
    return {"counts": counts.clamp(max=MAX_COUNT), "colors": colors, "family": family, "layout": layout}


def loss_fn(net: ShapesFeatureNet, images: torch.Tensor, t: dict[str, torch.Tensor]) -> torch.Tensor:
    out = net.heads(F.relu(net(images)))  # (B, n_out)
    nk, nc = len(KINDS) * (MAX_COUNT + 1), len(COLORS)
    counts, colors, family, layout = out.split([nk, nc, len(FAMILIES), len(KINDS) * GRID * GRID], dim=1)
    return (
        F.cross_entropy(counts.reshape(-1, MAX_COUNT + 1), t["counts"].reshape(-1))  # (B * kinds, 5)
        + F.binary_cross_entropy_with_logits(colors, t["colors"])
        + F.cross_entropy(family, t["family"])
        + F.binary_cross_entropy_with_logits(layout, t["layout"].flatten(1)) * 4
    )


def train(
    out: str | Path,
    steps: int = 600,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    width: int = 32,
    progress: bool = True,
) -> dict:
    """Train on the train split (half of each batch blurred with noise); save fp16 weights."""
    from tqdm.auto import tqdm

    from fluid.shapes.eval.classifier_data import blur_and_noise

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = ShapesFeatureNet(width)
    opt = torch.optim.AdamW(list(net.parameters()), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    ds = ShapesDataset("train")
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc="shapes features", disable=not progress)
    for step in bar:
        idx = range(step * batch_size, (step + 1) * batch_size)
        images, _ = ds.batch(idx)
        half = batch_size // 2
        sigma = float(torch.empty(()).uniform_(0.3, 1.2, generator=g))
        images[half:] = blur_and_noise(images[half:], sigma, 0.03, g)
        loss = loss_fn(net, images, targets([ds.spec(i) for i in idx]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    val = ShapesDataset("val")
    with torch.no_grad():
        images, _ = val.batch(range(512))
        val_loss = float(loss_fn(net.eval(), images, targets([val.spec(i) for i in range(512)])))
    info = {
        "steps": steps,
        "batch_size": batch_size,
        "seed": seed,
        "val_loss": round(val_loss, 4),
        "train_s": round(time.perf_counter() - t0, 1),
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in net.state_dict().items()}
    save_safetensors(state, out, metadata={"format": FORMAT, "width": str(width), "info": json.dumps(info)})
    return {**info, "identity": load_shapes_features(out).identity()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="train the feature network of the shapes Frechet distance")
    p.add_argument("--out", default=str(DEFAULT_PATH))
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(json.dumps(train(args.out, args.steps, args.batch_size, seed=args.seed)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
