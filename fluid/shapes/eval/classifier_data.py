"""Training data for the shape classifier: scenes, their distortions, and labelled patches.

Every scene comes with one coverage map per object, so that each piece the detector's
segmentation finds can be labelled: the kind of the one object it covers, or "other" when
it joins two objects, is a fragment, or is one of the irregular blobs painted here. Scenes
are drawn clean, blurred with noise, or through a shipped tokenizer (encode -> decode), the
distortions a generated image shows. Geometry is drawn from a ``numpy`` generator and
tensor noise from a ``torch.Generator``, both seeded by the caller.
"""

from __future__ import annotations

import enum
import math

import numpy as np
import torch
import torch.nn.functional as F

from fluid.shapes.dataset import ShapesDataset
from fluid.shapes.eval.classifier import OTHER, make_patches
from fluid.shapes.eval.detector import MIN_AREA, prepare, segment
from fluid.shapes.render import render, shape_sdf
from fluid.shapes.scenes import BACKGROUND, COLORS, FAMILIES, KINDS, SceneSpec


class Distortion(str, enum.Enum):
    RENDER = "render"  # the clean render
    BLUR = "blur"  # Gaussian blur (sigma 0.5-1.5 px) plus noise (std up to 0.04)
    KL = "kl"  # round trip through the shipped continuous tokenizer (a posterior sample)
    VQ = "vq"  # round trip through the shipped discrete tokenizer


def blur_and_noise(
    images: torch.Tensor, sigma: float, noise: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Separable Gaussian blur plus Gaussian noise, clamped to [-1, 1]; images (B, 3, H, W)."""
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float32, device=images.device)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    B, C, H, W = images.shape
    x = images.reshape(B * C, 1, H, W)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    x = x.view(B, C, H, W) + noise * torch.randn(images.shape, generator=generator, device=images.device)
    return x.clamp(-1, 1)


@torch.no_grad()
def round_trip(
    images: torch.Tensor,
    tokenizer,
    generator: torch.Generator | None = None,
    sample: bool = False,
    batch_size: int = 128,
) -> torch.Tensor:
    """encode -> decode through ``tokenizer``, in batches, float32 in [-1, 1]."""
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(tokenizer.device)
        out.append(tokenizer.decode(tokenizer.encode(x, generator=generator, sample=sample)).float().clamp(-1, 1).cpu())
    return torch.cat(out)


# ----------------------------------------------------------------------------- scenes


def _alpha_of(images: torch.Tensor, color_rgb: torch.Tensor) -> torch.Tensor:
    """Coverage (B, H, W) of single-object renders: distance from the background over the
    colour's distance from it."""
    bg = torch.tensor(BACKGROUND, dtype=torch.float32).view(1, 3, 1, 1) / 127.5 - 1
    return ((images - bg).norm(dim=1) / (color_rgb.view(-1, 3, 1, 1) - bg).norm(dim=1).clamp_min(1e-6)).clamp(0, 1)


def dataset_scenes(
    ds: ShapesDataset, indices, resolution: int
) -> tuple[torch.Tensor, list[list[tuple[np.ndarray, int]]]]:
    """Renders (B, 3, R, R) of dataset items and, per image, [(coverage (R, R), class index)]."""
    specs = [ds.spec(int(i)) for i in indices]
    images = render(specs, resolution)
    singles = [SceneSpec(s.family, "", [o]) for s in specs for o in s.objects]
    colors = torch.tensor([COLORS[o.color] for s in specs for o in s.objects], dtype=torch.float32) / 127.5 - 1
    alphas = _alpha_of(render(singles, resolution), colors).numpy()  # (objects, R, R)
    objects, k = [], 0
    for s in specs:
        objects.append([(alphas[k + j], KINDS.index(o.kind)) for j, o in enumerate(s.objects)])
        k += len(s.objects)
    return images, objects


def _supersampled(inside, res: int, ss: int = 4) -> np.ndarray:
    """Coverage (res, res) of the region ``inside(x, y)`` (normalised coordinates)."""
    t = (np.arange(res * ss) + 0.5) / (res * ss)
    x, y = np.meshgrid(t, t)
    return inside(x, y).reshape(res, ss, res, ss).mean((1, 3))


def ellipses_inside(parts):
    """``inside(x, y)`` of a union of ellipses, each ``(cx, cy, semi-axis a, semi-axis b, angle)``."""

    def inside(x, y):
        m = np.zeros_like(x, dtype=bool)
        for px, py, a, b, th in parts:
            u = (x - px) * np.cos(th) + (y - py) * np.sin(th)
            v = (y - py) * np.cos(th) - (x - px) * np.sin(th)
            m |= (u / a) ** 2 + (v / b) ** 2 <= 1
        return m

    return inside


def polygon_inside(px: np.ndarray, py: np.ndarray):
    """``inside(x, y)`` of the polygon with vertices (px, py), by the even-odd rule."""

    def inside(x, y):
        m = np.zeros_like(x, dtype=bool)
        for i in range(len(px)):
            x1, y1, x2, y2 = px[i], py[i], px[i - 1], py[i - 1]
            m ^= ((y1 > y) != (y2 > y)) & (x < (x2 - x1) * (y - y1) / (y2 - y1 + 1e-12) + x1)
        return m

    return inside


def _blob(rng: np.random.Generator, cx: float, cy: float, r: float):
    """An ``inside(x, y)`` function of one irregular region of radius about ``r``."""
    kind = rng.integers(5)
    if kind == 0:  # a union of two or three ellipses
        parts = [
            (
                cx + rng.uniform(-r, r) * 0.5 * (j > 0),
                cy + rng.uniform(-r, r) * 0.5 * (j > 0),
                r * rng.uniform(0.4, 1.0),
                r * rng.uniform(0.25, 0.7),
                rng.uniform(0, np.pi),
            )
            for j in range(int(rng.integers(2, 4)))
        ]
        return ellipses_inside(parts)
    if kind == 1:  # a star-shaped polygon with jagged radii
        n = int(rng.integers(5, 12))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = r * rng.uniform(0.4, 1.0, n)
        return polygon_inside(cx + rad * np.cos(ang), cy + rad * np.sin(ang))
    if kind == 2:  # two shapes fused into one region
        k1, k2 = rng.choice(KINDS, 2)
        s1, s2 = r * rng.uniform(0.5, 0.8), r * rng.uniform(0.4, 0.7)
        a = rng.uniform(0, 2 * np.pi)
        off = rng.uniform(0.4, 0.9) * (s1 + s2) / 2
        c2 = (cx + off * np.cos(a), cy + off * np.sin(a))
        return lambda x, y: (shape_sdf(k1, x - cx, y - cy, s1) <= 0) | (shape_sdf(k2, x - c2[0], y - c2[1], s2) <= 0)
    if kind == 3:  # a shape with a slice cut away by a line
        k = rng.choice(KINDS)
        s = r * rng.uniform(0.7, 1.0)
        a = rng.uniform(0, 2 * np.pi)
        cut = s * rng.uniform(-0.2, 0.3)  # the line's distance from the centre
        return lambda x, y: (
            (shape_sdf(k, x - cx, y - cy, s) <= 0) & ((x - cx) * np.cos(a) + (y - cy) * np.sin(a) <= cut)
        )
    # an elongated ellipse or rectangle, at any angle
    a, b, th = r, r / rng.uniform(1.7, 3.0), rng.uniform(0, np.pi)
    ellipse = rng.random() < 0.5

    def inside(x, y):
        u = (x - cx) * np.cos(th) + (y - cy) * np.sin(th)
        v = (y - cy) * np.cos(th) - (x - cx) * np.sin(th)
        return (u / a) ** 2 + (v / b) ** 2 <= 1 if ellipse else (np.abs(u) <= a) & (np.abs(v) <= b)

    return inside


def blob_scenes(
    n: int, rng: np.random.Generator, resolution: int = 64
) -> tuple[torch.Tensor, list[list[tuple[np.ndarray, int]]]]:
    """``n`` images with one or two irregular blobs (class "other") and sometimes one regular
    shape, each in a palette colour."""
    bg = np.array(BACKGROUND, dtype=np.float64) / 255.0
    palette = list(COLORS.values())
    images, objects = [], []
    for _ in range(n):
        img = np.broadcast_to(bg, (resolution, resolution, 3)).copy()  # (R, R, 3)
        objs, boxes = [], []
        for j in range(int(rng.integers(1, 3)) + int(rng.random() < 0.3)):
            r = rng.uniform(0.09, 0.25)
            for _ in range(20):  # keep the regions apart
                cx, cy = rng.uniform(0.1 + r, 0.9 - r, 2)
                if all(max(abs(cx - bx), abs(cy - by)) > r + br + 0.06 for bx, by, br in boxes):
                    break
            else:
                continue
            boxes.append((cx, cy, r))
            regular = j == 2
            if regular:
                kind = rng.choice(KINDS)
                s = r * 0.8
                inside = lambda x, y, k=kind, c=(cx, cy), s=s: shape_sdf(k, x - c[0], y - c[1], s) <= 0  # noqa: E731
            else:
                inside = _blob(rng, cx, cy, r)
            alpha = _supersampled(inside, resolution)
            color = np.array(palette[rng.integers(len(palette))]) / 255.0
            img += alpha[..., None] * (color - img)
            objs.append((alpha, KINDS.index(kind) if regular else OTHER))
        images.append(torch.from_numpy(img).permute(2, 0, 1).float() * 2 - 1)
        objects.append(objs)
    return torch.stack(images), objects


# ----------------------------------------------------------------------------- labelled patches


def label_pieces(pieces, objects: list[tuple[np.ndarray, int]], scale: int) -> list[int]:
    """The class of each piece: the kind of the one object it holds most of, else "other"
    (a piece that joins two objects, a fragment, or a blob). The piece may be larger than
    its object: decoders smear small objects.

    ``objects`` holds (coverage (R, R), class) at the image's resolution; the detector may
    have upsampled the image by ``scale``."""
    out = []
    cover = [np.kron(a, np.ones((scale, scale))) > 0.5 if scale > 1 else a > 0.5 for a, _ in objects]
    for p in pieces:
        share = [(p.mask & c).sum() / max(c.sum(), 1) for c in cover]  # of each object, the part in the piece
        touched = [k for k, s in enumerate(share) if s >= 0.3]
        if len(touched) == 1 and share[touched[0]] >= 0.5:
            out.append(objects[touched[0]][1])
        else:
            out.append(OTHER)
    return out


def patches_of(
    images: torch.Tensor, objects: list[list[tuple[np.ndarray, int]]]
) -> tuple[list[torch.Tensor], list[int]]:
    xs, ys = [], []
    for img, objs in zip(images, objects):
        _, dist = prepare(img)
        pieces = segment(dist, MIN_AREA)
        if not pieces:
            continue
        xs.append(make_patches(dist, pieces))
        ys += label_pieces(pieces, objs, dist.shape[0] // img.shape[-1])
    return xs, ys


DEFAULT_IMAGES = {Distortion.RENDER: 1500, Distortion.BLUR: 1500, Distortion.KL: 4000, Distortion.VQ: 4000}


def training_patches(
    images: dict[Distortion, int] | None = None, seed: int = 0, progress: bool = True, blob_fraction: float = 0.25
) -> tuple[torch.Tensor, torch.Tensor]:
    """Labelled patches (n, C, P, P) and classes (n,) from scenes of the train split (counting,
    whose objects are the smallest, twice as often as the other families) and blob scenes,
    ``images[d]`` scenes under each Distortion d; the round trips use the shipped tokenizers."""
    from tqdm.auto import tqdm

    from fluid.assets import tokenizer_path
    from fluid.config import TokenType
    from fluid.tokenizers.load import load_tokenizer

    images = {Distortion(k): int(v) for k, v in (images or DEFAULT_IMAGES).items()}
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    ds = ShapesDataset(
        "train", families=FAMILIES, family_weights=[2.0 if f.value == "counting" else 1.0 for f in FAMILIES]
    )
    tokenizers = {Distortion.KL: TokenType.CONTINUOUS, Distortion.VQ: TokenType.DISCRETE}
    xs, ys, offset, chunk = [], [], 0, 250
    bar = tqdm(total=sum(images.values()), desc="patches", unit="img", disable=not progress)
    for source, count in images.items():
        tok = load_tokenizer(tokenizer_path(tokenizers[source])).eval() if source in tokenizers else None
        for start in range(0, count, chunk):
            n = min(chunk, count - start)
            n_blob = int(round(n * blob_fraction))
            res = 64 if source is not Distortion.RENDER else int(rng.choice([32, 64, 128]))
            batch, objects = dataset_scenes(ds, range(offset, offset + n - n_blob), res)
            offset += n - n_blob
            b_images, b_objects = blob_scenes(n_blob, rng, res)
            batch, objects = torch.cat([batch, b_images]), objects + b_objects
            if source is Distortion.BLUR:
                batch = torch.cat(
                    [
                        blur_and_noise(im[None], float(rng.uniform(0.5, 1.5)), float(rng.uniform(0, 0.04)), g)
                        for im in batch
                    ]
                )
            elif tok is not None:
                batch = round_trip(batch, tok, g, sample=source is Distortion.KL)
            x, y = patches_of(batch, objects)
            xs += x
            ys += y
            bar.update(n)
    bar.close()
    return torch.cat(xs), torch.tensor(ys, dtype=torch.long)
