"""A small learned reader of object kinds, for images that went through an autoencoder.

The classical detector (``fluid.shapes.eval.detector``) fits ideal outlines to each object's mask.
That is exact on renders, but decoders round the corners of small objects (a 13 px cross
can come back as a soft diamond, a small square as a rounded one), generated images are
never quite ideal, and irregular blobs sometimes fit a template well enough (the template
reader files 12.5% of held-out blobs under a kind, this reader 3.3%). Generated images
always come out of a decoder, so the detector must read decoded shapes.

``ShapeClassifier`` sees one object at a time: the detector's segmentation finds it, and
``make_patches`` cuts a square window around its mask from the distance-to-background map,
normalised by the object's contrast (so colour plays no part), resampled to 32 x 32. A
small CNN then says circle, square, triangle, cross, or "other": it was trained on the
``shapes`` train split drawn clean, blurred with noise, and through both shipped tokenizers,
and on irregular blobs (unions of ellipses, jagged polygons, fused and cut shapes, elongated
ellipses and rectangles) labelled "other", so that blobs are not filed under a kind. A kind
is accepted when its probability is at least ``threshold``, otherwise it is "unknown".

Train (CPU, one thread: ~3 minutes to build the patches from 11,000 scenes, ~2.5 to fit;
writes 0.25 MB)::

    python -m fluid.shapes.eval.train_classifier --out fluid/assets/eval/shape-classifier.safetensors
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

from fluid.files import save_safetensors
from fluid.shapes.eval.detector import UNKNOWN, Piece
from fluid.shapes.scenes import KINDS

PATCH = 32  # side of the patch the classifier reads
WINDOW = 1.25  # the window is this many times the mask's longer side, plus WINDOW_PAD px
WINDOW_PAD = 2.0
CLASSES = (*KINDS, "other")
OTHER = len(KINDS)  # index of "other"
THRESHOLD = 0.4  # measured: 0.4 vs 0.6 reads 3 points more round-trip counting scenes, names no more blobs
DEFAULT_PATH = Path(__file__).resolve().parents[2] / "assets" / "eval" / "shape-classifier.safetensors"


def make_patches(dist: np.ndarray, pieces: list[Piece], size: int = PATCH) -> torch.Tensor:
    """(n, 2, size, size) patches, one per piece of a distance map ``dist`` (H, W). Channel 0:
    the map divided by the piece's contrast, clipped to [0, 1.5] and zeroed outside its
    region (so a neighbour never shows), in a square window centred on the mask's bounding
    box. Channel 1: the window's side over the image's, constant: small objects come back
    from a decoder more deformed than big ones, and the classifier may use that."""
    H, W = dist.shape
    d = torch.from_numpy(np.ascontiguousarray(dist, dtype=np.float32))  # (H, W)
    maps = torch.stack([torch.where(torch.from_numpy(p.region), (d / p.contrast).clamp(0, 1.5), 0.0) for p in pieces])
    grids, sides = [], []
    for p in pieces:
        x0, y0, x1, y1 = p.bbox_px
        side = WINDOW * max(x1 - x0, y1 - y0) + WINDOW_PAD
        sides.append(side)
        t = (torch.arange(size, dtype=torch.float32) + 0.5) / size - 0.5  # (size,) in (-0.5, 0.5)
        xs = ((x0 + x1) / 2 + t * side) * 2 / W - 1  # pixel positions -> grid_sample's [-1, 1]
        ys = ((y0 + y1) / 2 + t * side) * 2 / H - 1
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")  # (size, size) each
        grids.append(torch.stack([gx, gy], -1))  # (size, size, 2)
    patches = F.grid_sample(
        maps[:, None], torch.stack(grids), mode="bilinear", padding_mode="zeros", align_corners=False
    )  # (n, 1, size, size)
    scale = torch.tensor(sides, dtype=torch.float32).view(-1, 1, 1, 1) / max(H, W)  # (n, 1, 1, 1)
    return torch.cat([patches, scale.expand_as(patches)], 1)  # (n, 2, size, size)


class ShapeClassifier(nn.Module):
    """Patches (B, 2, 32, 32) -> logits over CLASSES (B, 5). About 100k parameters."""

    def __init__(self, width: int = 16, threshold: float = THRESHOLD):
        super().__init__()
        w = width
        self.threshold = threshold
        self.features = nn.Sequential(
            nn.Conv2d(2, w, 3, padding=1),
            nn.ReLU(),  # (B, w, 32, 32)
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),
            nn.ReLU(),  # (B, 2w, 16, 16)
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1),
            nn.ReLU(),  # (B, 4w, 8, 8)
            nn.Conv2d(4 * w, 4 * w, 3, stride=2, padding=1),
            nn.ReLU(),  # (B, 4w, 4, 4)
        )
        # flatten, not pool: where the mass sits (a triangle's apex up) is part of the kind
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * w * 16, 4 * w), nn.ReLU(), nn.Linear(4 * w, len(CLASSES)))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(patches))

    @torch.no_grad()
    def read_kinds(self, dist: np.ndarray, pieces: list[Piece]) -> list[str]:
        """The kind of each piece, or "unknown" for "other" and for unsure answers."""
        probs = self(make_patches(dist, pieces).to(self.head[-1].weight.device)).softmax(-1).cpu()  # (n, 5)
        p, idx = probs.max(-1)
        return [
            CLASSES[i] if (i != OTHER and q >= self.threshold) else UNKNOWN for q, i in zip(p.tolist(), idx.tolist())
        ]

    def save(self, path: str | Path, info: dict | None = None) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to(torch.float16).contiguous() for k, v in self.state_dict().items()}
        meta = {
            "width": str(self.features[0].out_channels),
            "threshold": str(self.threshold),
            "classes": ",".join(CLASSES),
            "info": json.dumps(info or {}),
        }
        save_safetensors(state, path, metadata=meta)
        return path


def load_shape_classifier(path: str | Path | None = None, device: str | torch.device = "cpu") -> ShapeClassifier:
    """The shipped classifier (or the one at ``path``), in eval mode, float32."""
    path = Path(path) if path is not None else DEFAULT_PATH
    if not path.is_file():
        raise FileNotFoundError(
            f"shape classifier weights {path} do not exist; train them with "
            f"`python -m fluid.shapes.eval.train_classifier --out {path}`"
        )
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("classes") != ",".join(CLASSES):
        raise ValueError(f"{path} is not a shape classifier for classes {CLASSES} (metadata {meta.get('classes')!r})")
    model = ShapeClassifier(int(meta["width"]), float(meta["threshold"]))
    model.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return model.eval().requires_grad_(False).to(device)
