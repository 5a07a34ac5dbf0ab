"""Drawing ``shapes`` scenes: signed distance functions with ~1 px of anti-aliasing, a whole
batch at once (``render``), in the normalised geometry of :mod:`fluid.shapes.scenes`."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from fluid.shapes.scenes import BACKGROUND, COLORS, CROSS_ARM, HALF_EXTENT, KINDS, SceneSpec, ShapeObject


def _ops(x):
    """(sqrt, maximum, minimum, relu) for torch tensors or numpy arrays: the SDFs below serve
    both the renderer (torch, batched, any device) and the detector's templates (numpy)."""
    if isinstance(x, torch.Tensor):
        return torch.sqrt, torch.maximum, torch.minimum, lambda t: t.clamp(min=0)
    return np.sqrt, np.maximum, np.minimum, lambda t: np.maximum(t, 0)


def _box_sdf(dx, dy, hx, hy):
    sqrt, maximum, _, relu = _ops(dx)
    qx, qy = abs(dx) - hx, abs(dy) - hy
    return sqrt(relu(qx) ** 2 + relu(qy) ** 2) - relu(-maximum(qx, qy))


def shape_sdf(kind: str, dx, dy, s):
    """Signed distance (negative inside) of ``kind`` of size ``s`` at offset (dx, dy) from
    its centre, in any one unit (normalised or pixels); torch tensors or numpy arrays that
    broadcast together."""
    sqrt, maximum, minimum, _ = _ops(dx)
    if kind == "circle":
        return sqrt(dx * dx + dy * dy) - s
    if kind == "square":
        h = HALF_EXTENT["square"] * s
        return _box_sdf(dx, dy, h, h)
    if kind == "triangle":
        # apex (0, -s), base corners (+-s, +s); sides have outward normals (+-2, -1) / sqrt(5)
        sides = (2.0 * abs(dx) - dy - s) / math.sqrt(5.0)
        return maximum(dy - s, sides)
    if kind == "cross":
        t = CROSS_ARM * s
        return minimum(_box_sdf(dx, dy, s, t), _box_sdf(dx, dy, t, s))
    raise ValueError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")


def coverage(sdf, resolution: float):
    """Anti-aliased coverage in [0, 1]: a 1-pixel linear ramp across the boundary (``sdf`` in
    normalised units times ``resolution`` pixels per unit; pass 1 for an SDF in pixels)."""
    a = 0.5 - sdf * resolution
    return a.clamp(0.0, 1.0) if isinstance(a, torch.Tensor) else np.clip(a, 0.0, 1.0)


def pixel_centres(resolution: int, device: torch.device | str = "cpu") -> torch.Tensor:
    return (torch.arange(resolution, device=device, dtype=torch.float32) + 0.5) / resolution


def render(specs: Sequence[SceneSpec], resolution: int = 64, device: torch.device | str = "cpu") -> torch.Tensor:
    """Draw a batch of scenes: (B, 3, H, W) float32 in [-1, 1], H = W = resolution.

    Each object is drawn only inside a square window around its bounding box. Objects are
    composited ("over", so overlaps are drawn in order) slot by slot: the i-th object of every
    scene at once, grouped by kind and window size, so one SDF is evaluated per window pixel."""
    if int(resolution) != resolution or resolution < 8:
        raise ValueError(f"resolution must be an integer >= 8, not {resolution!r}")
    device, R, B = torch.device(device), int(resolution), len(specs)
    bg = torch.tensor(BACKGROUND, dtype=torch.float32, device=device) / 127.5 - 1.0
    images = bg.view(1, 3, 1, 1).repeat(B, 1, R, R)  # (B, 3, R, R)
    flat = images.view(-1)  # (B * 3 * R * R,), written in place
    palette = torch.tensor(list(COLORS.values()), dtype=torch.float32, device=device) / 127.5 - 1.0  # (C, 3)
    color_index = {name: i for i, name in enumerate(COLORS)}
    groups: dict[tuple[int, str, int], list[tuple[int, ShapeObject]]] = {}
    for b, spec in enumerate(specs):
        for slot, o in enumerate(spec.objects):
            if o.kind not in HALF_EXTENT or o.color not in COLORS:
                raise ValueError(f"unknown kind or colour in {o}")
            window = min(R, 4 * math.ceil((2 * o.half * R + 3) / 4))  # box + AA margin, rounded up to 4 px
            groups.setdefault((slot, o.kind, window), []).append((b, o))
    steps = torch.arange(max((k[2] for k in groups), default=1), device=device)
    channel = torch.arange(3, device=device).view(1, 3, 1, 1) * R * R  # (1, 3, 1, 1)
    for (slot, kind, L), group in sorted(groups.items(), key=lambda kv: kv[0][0]):
        geo = torch.tensor([(o.cx * R, o.cy * R, o.size * R) for _, o in group], dtype=torch.float32, device=device)
        cx, cy, s = geo.unbind(1)  # (n,) each, in pixels
        x0 = (cx - L / 2).round().clamp(0, R - L).long()  # window origin, inside the image
        y0 = (cy - L / 2).round().clamp(0, R - L).long()
        xi = x0[:, None] + steps[:L]  # (n, L) pixel columns
        yi = y0[:, None] + steps[:L]  # (n, L) pixel rows
        dx = (xi + 0.5 - cx[:, None]).view(-1, 1, L)  # (n, 1, L)
        dy = (yi + 0.5 - cy[:, None]).view(-1, L, 1)  # (n, L, 1)
        alpha = coverage(shape_sdf(kind, dx, dy, s.view(-1, 1, 1)), 1).unsqueeze(1)  # (n, 1, L, L)
        base = torch.tensor([b * 3 * R * R for b, _ in group], device=device).view(-1, 1, 1, 1)
        index = base + channel + yi.view(-1, 1, L, 1) * R + xi.view(-1, 1, 1, L)  # (n, 3, L, L)
        color = palette[torch.tensor([color_index[o.color] for _, o in group], device=device)]  # (n, 3)
        under = flat[index]  # (n, 3, L, L)
        flat[index] = under + alpha * (color.view(-1, 3, 1, 1) - under)
    return images
