"""A classical shape detector for the ``shapes`` data, and GenEval-style scoring.

By default no learned weights. ``detect`` finds the objects in an image in four steps
(images smaller than 64 px are first upsampled to 64, so that small objects still span
enough pixels):

1. Foreground: each pixel's RGB distance from the background colour (the median of the image
   border when that is close to the dataset's background, else the dataset's background),
   thresholded low so that faint objects still form one connected component.
2. Components: ``scipy.ndimage.label``; specks below ``min_area`` of the image are dropped.
3. Each component is re-thresholded at half of its own contrast, which puts the mask edge
   where a blurred edge crosses 50% coverage, i.e. where the sharp edge was. If the mask
   falls apart (objects joined by a faint bridge), each part is an object of its own.
4. Colour: mean of the interior pixels (mask eroded by one pixel, since blur smears the
   edges), named by the nearest palette hue; too grey, too dark, too far from every palette
   hue or not flat (noise) -> "unknown". Kind: the ideal outline of every kind is fitted to
   the mask's bounding box and rendered with the dataset's own SDFs; the kind with the best
   intersection-over-union wins if that IoU is high and clearly above the runner-up,
   otherwise (and for objects cut by the image edge, or not flat in colour) the kind is
   "unknown". Fragments and irregular blobs fit no template well, so they are not filed
   under any kind. With ``classifier=`` (``fluid.shapes.eval.classifier``), a small CNN
   trained on renders and on the shipped tokenizers' round trips reads the kind instead:
   the templates no longer fit small objects once a decoder has rounded them off.

``score(spec_or_caption, detections)`` then applies GenEval's rule of each task family;
"unknown" detections never count as any kind or colour.
"""

from __future__ import annotations

import colorsys
import dataclasses

import numpy as np
import torch
from scipy import ndimage

from fluid.shapes.render import coverage, shape_sdf
from fluid.shapes.scenes import (
    BACKGROUND,
    COLORS,
    CROSS_ARM,
    HALF_EXTENT,
    KINDS,
    Family,
    Prompt,
    SceneSpec,
    parse_caption,
    relation_of,
)

UNKNOWN = "unknown"

MIN_AREA = 0.008  # components smaller than this fraction of the image are specks (the smallest
# object the dataset draws, a counting triangle, covers 0.02)
SEED_THRESHOLD = 0.18  # RGB distance (0-1 units, max sqrt 3) that makes a pixel foreground
MIN_CONTRAST = 0.25  # components whose typical distance from the background is lower are ignored
# A kind is accepted when its template's IoU misses 1 by at most SHAPE_TOLERANCE (a
# scale-free allowance for a slightly imperfect shape) plus RASTER_SLACK[kind] / r, where r
# is the object's equivalent radius in pixels: pixelisation and blur cost a band of roughly
# constant width along the outline, so their IoU loss falls as 1 / r. The slacks sit just
# above the worst loss measured on renders blurred with sigma 1.3 px plus noise; corners
# (square, triangle) and the cross's inner corners lose more than the circle.
SHAPE_TOLERANCE = 0.03
RASTER_SLACK = {"circle": 0.7, "square": 1.0, "triangle": 1.05, "cross": 1.35}
MIN_IOU_MARGIN = 0.02  # ... and the best IoU must beat the runner-up's by this much
MAX_COLOR_STD = 0.10  # interior RGB std (0-1 units) above this: not a flat-coloured shape
MIN_SATURATION, MIN_VALUE, MAX_HUE_DISTANCE = 0.35, 0.25, 30.0
MIN_SIDE = 64  # smaller images are upsampled (bilinear) to this side before detection
POSITION_MARGIN = 0.05  # position: the dominant-axis centre offset must exceed this


@dataclasses.dataclass(frozen=True)
class Detection:
    kind: str  # one of KINDS or "unknown"
    color: str  # one of COLORS or "unknown"
    cx: float  # bounding-box centre, normalised [0, 1] like ShapeObject.cx
    cy: float
    area: float  # mask area as a fraction of the image
    score: float  # IoU of the best kind template with the mask (0..1)
    bbox: tuple[float, float, float, float]  # (x0, y0, x1, y1), normalised


def _hue(rgb) -> tuple[float, float, float]:
    h, s, v = colorsys.rgb_to_hsv(*[float(c) for c in rgb])
    return h * 360.0, s, v


_PALETTE_HUES = {name: _hue(np.array(rgb) / 255.0)[0] for name, rgb in COLORS.items()}


def name_color(rgb) -> str:
    """The palette colour whose hue is nearest to ``rgb`` (three floats in [0, 1])."""
    h, s, v = _hue(rgb)
    if s < MIN_SATURATION or v < MIN_VALUE:
        return UNKNOWN
    dist = {n: min(abs(h - ph), 360.0 - abs(h - ph)) for n, ph in _PALETTE_HUES.items()}
    best = min(dist, key=dist.get)
    return best if dist[best] <= MAX_HUE_DISTANCE else UNKNOWN


# area of each kind in units of s^2, and its centroid's offset below the bounding-box centre
_AREA = {
    "circle": np.pi,
    "square": 4 * HALF_EXTENT["square"] ** 2,
    "triangle": 2.0,
    "cross": 8 * CROSS_ARM - 4 * CROSS_ARM**2,
}
_CENTROID_DROP = {"circle": 0.0, "square": 0.0, "triangle": 1 / 3, "cross": 0.0}


def _template_ious(mask: np.ndarray) -> dict[str, float]:
    """IoU of ``mask`` (h, w, bool) with each kind's ideal shape, best of two fits: one to the
    mask's bounding box, one matching its area and centroid (robust to a blunted corner)."""
    h, w = mask.shape
    rows, cols = np.nonzero(mask)
    x0, x1, y0, y1 = cols.min(), cols.max() + 1, rows.min(), rows.max() + 1  # pixel edges
    mx, my = cols.mean() + 0.5, rows.mean() + 0.5  # centroid
    xs = (np.arange(w) + 0.5).reshape(1, 1, w)  # (1, 1, w) pixel centres
    ys = (np.arange(h) + 0.5).reshape(1, h, 1)  # (1, h, 1)
    m = mask.astype(np.float64)[None]  # (1, h, w)
    out = {}
    for kind in KINDS:
        s_box = (x1 - x0 + y1 - y0) / 4 / HALF_EXTENT[kind]
        s_mom = np.sqrt(len(rows) / _AREA[kind])
        fits = [((x0 + x1) / 2, (y0 + y1) / 2, s_box), (mx, my - _CENTROID_DROP[kind] * s_mom, s_mom)]
        cx, cy, s = (np.array(v, dtype=np.float64).reshape(-1, 1, 1) for v in zip(*fits))  # (2, 1, 1) each
        t = coverage(shape_sdf(kind, xs - cx, ys - cy, s), 1)  # (2, h, w)
        iou = np.minimum(m, t).sum((1, 2)) / np.maximum(np.maximum(m, t).sum((1, 2)), 1e-6)  # (2,)
        out[kind] = float(iou.max())
    return out


def _to_numpy(image: torch.Tensor) -> np.ndarray:
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"detect expects a (3, H, W) tensor in [-1, 1], got {getattr(image, 'shape', type(image))}")
    x = image.detach().float().cpu().clamp(-1, 1)  # (3, H, W)
    if min(x.shape[1:]) < MIN_SIDE:  # small objects are a few pixels wide: judge them upsampled
        scale = MIN_SIDE / min(x.shape[1:])
        x = torch.nn.functional.interpolate(x[None], scale_factor=scale, mode="bilinear")[0]
    return ((x + 1) / 2).permute(1, 2, 0).numpy()  # (H, W, 3) in [0, 1]


def _background(rgb: np.ndarray) -> np.ndarray:
    known = np.array(BACKGROUND, dtype=np.float32) / 255.0
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])  # (4 * side, 3)
    est = np.median(border, axis=0)
    return est if np.linalg.norm(est - known) < 0.15 else known


@dataclasses.dataclass
class Piece:
    """One object candidate found by ``segment``, as masks over the (upsampled) image."""

    mask: np.ndarray  # (H, W) bool: pixels above half of the object's contrast
    region: np.ndarray  # (H, W) bool: the mask grown by 2 px within its seed component
    contrast: float  # 90th percentile distance from the background inside the component
    bbox_px: tuple[int, int, int, int]  # (x0, y0, x1, y1) pixel edges of the mask


def prepare(image: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The detector's view of one (3, H, W) image in [-1, 1]: RGB (H', W', 3) in [0, 1],
    upsampled to at least MIN_SIDE, and each pixel's RGB distance from the background (H', W')."""
    rgb = _to_numpy(image)
    return rgb, np.linalg.norm(rgb - _background(rgb), axis=-1)


def segment(dist: np.ndarray, min_area: float = MIN_AREA) -> list[Piece]:
    """Object candidates of a distance map (steps 1-3 of the module docstring). A component
    whose 50% mask falls apart (two objects joined by a faint bridge, as an autoencoder's
    blur can leave) gives one piece per part."""
    H, W = dist.shape
    labels, _ = ndimage.label(dist > SEED_THRESHOLD)
    pieces = []
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        # a 3-pixel border so that masks can grow and templates see the outside of the object
        ys = slice(max(sl[0].start - 3, 0), min(sl[0].stop + 3, H))
        xs = slice(max(sl[1].start - 3, 0), min(sl[1].stop + 3, W))
        comp = labels[ys, xs] == i  # (h, w)
        if comp.sum() < min_area * H * W:
            continue
        d = dist[ys, xs]
        contrast = float(np.percentile(d[comp], 90))
        if contrast < MIN_CONTRAST:
            continue
        parts, n = ndimage.label(comp & (d > 0.5 * contrast))  # the edge where a blurred edge crosses 50%
        for j in range(1, n + 1):
            mask = parts == j
            if mask.sum() < min_area * H * W:
                continue
            region = ndimage.binary_dilation(mask, iterations=2) & comp
            if n > 1:  # keep this part's soft edge, not the other parts
                region &= ~ndimage.binary_dilation((parts > 0) & ~mask, iterations=1)
            full_mask, full_region = np.zeros((H, W), bool), np.zeros((H, W), bool)
            full_mask[ys, xs], full_region[ys, xs] = mask, region
            rows, cols = np.nonzero(mask)
            bbox = (
                xs.start + int(cols.min()),
                ys.start + int(rows.min()),
                xs.start + int(cols.max()) + 1,
                ys.start + int(rows.max()) + 1,
            )
            pieces.append(Piece(full_mask, full_region, contrast, bbox))
    return pieces


def detect(image: torch.Tensor, min_area: float = MIN_AREA, classifier=None) -> list[Detection]:
    """Objects in one image (3, H, W) in [-1, 1], largest first.

    ``classifier`` (``fluid.shapes.eval.classifier.load_shape_classifier()``) reads each
    object's kind from its patch instead of the template fit: templates no longer fit the
    small shapes of images decoded by an autoencoder, the classifier was trained on them.
    """
    rgb, dist = prepare(image)
    pieces = segment(dist, min_area)
    kinds = classifier.read_kinds(dist, pieces) if (classifier is not None and pieces) else [None] * len(pieces)
    found = [_describe(rgb, dist, p, kind) for p, kind in zip(pieces, kinds)]
    return sorted(found, key=lambda det: -det.area)


def _describe(rgb: np.ndarray, dist: np.ndarray, piece: Piece, learned_kind: str | None) -> Detection:
    """Kind, colour and place of one piece of an image ``rgb`` (H, W, 3) whose distance map is
    ``dist`` (H, W); ``learned_kind``, when given, replaces the template fit (step 4)."""
    H, W = dist.shape
    x0, y0, x1, y1 = piece.bbox_px
    sl = (slice(max(y0 - 2, 0), min(y1 + 2, H)), slice(max(x0 - 2, 0), min(x1 + 2, W)))
    mask, area = piece.mask[sl], int(piece.mask.sum())  # (h, w) crop around the object

    # colour from the interior: blur mixes the outermost pixel with the background
    interior = ndimage.binary_erosion(mask)
    if interior.sum() < 4:
        interior = mask & (dist[sl] >= 0.85 * piece.contrast)
    pixels = rgb[sl][interior]  # (n, 3)
    flat = pixels.std(0).mean() <= MAX_COLOR_STD  # noise and textures are not shapes
    color = name_color(pixels.mean(0)) if flat else UNKNOWN

    ious = _template_ious(mask)
    ranked = sorted(ious, key=ious.get, reverse=True)
    best, second = ious[ranked[0]], ious[ranked[1]]
    if learned_kind is None:
        fits = 1.0 - best <= SHAPE_TOLERANCE + RASTER_SLACK[ranked[0]] / np.sqrt(area / np.pi)
        kind = ranked[0] if (fits and best - second >= MIN_IOU_MARGIN) else UNKNOWN
    else:
        kind = learned_kind
    clipped = x0 == 0 or y0 == 0 or x1 == W or y1 == H  # cut by the image edge: outline unknowable
    kind = kind if (flat and not clipped) else UNKNOWN
    bbox = (x0 / W, y0 / H, x1 / W, y1 / H)
    return Detection(kind, color, (x0 + x1) / 2 / W, (y0 + y1) / 2 / H, area / (H * W), best, bbox)


def detect_batch(images: torch.Tensor, min_area: float = MIN_AREA, classifier=None) -> list[list[Detection]]:
    """``detect`` for each image of a (B, 3, H, W) batch."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"detect_batch expects a (B, 3, H, W) tensor, got {getattr(images, 'shape', type(images))}")
    return [detect(img, min_area, classifier) for img in images]


# ----------------------------------------------------------------------------- scoring


def _matches(det: Detection, kind: str, color: str | None) -> bool:
    return det.kind == kind and (color is None or det.color == color)


def score(spec: SceneSpec | Prompt | str, detections: list[Detection], strict: bool = False) -> bool:
    """Whether the detections satisfy the caption, by GenEval's rule for its family.

    - single_object "a {kind}": at least one object of the kind.
    - two_object "a {k1} and a {k2}": at least one of each kind.
    - counting "{N} {kind}s": exactly N objects of the kind (other kinds are ignored).
    - colors "a {color} {kind}": an object of the kind has the colour.
    - position "a {k1} {relation} a {k2}": some k1 object and some k2 object whose
      bounding-box centres differ most along the relation's axis, in its direction, by more
      than POSITION_MARGIN of the image side.
    - color_attr "a {c1} {k1} and a {c2} {k2}": an object of k1 with c1 and one of k2 with c2.

    "unknown" detections never count as any kind or colour. ``strict`` (not GenEval) also
    fails any image with more detections, unknown ones included, than the caption asks for,
    which catches fragments and stray blobs beside a correct object.
    """
    prompt = spec if isinstance(spec, Prompt) else parse_caption(spec.caption if isinstance(spec, SceneSpec) else spec)
    F = Family
    expected = prompt.count if prompt.family is F.COUNTING else len(prompt.kinds)
    if strict and len(detections) != expected:
        return False
    if prompt.family is F.COUNTING:
        return sum(d.kind == prompt.kinds[0] for d in detections) == prompt.count
    if prompt.family is F.POSITION:
        firsts = [d for d in detections if d.kind == prompt.kinds[0]]
        seconds = [d for d in detections if d.kind == prompt.kinds[1]]
        return any(relation_of(a, b, POSITION_MARGIN) is prompt.relation for a in firsts for b in seconds)
    return all(any(_matches(d, k, c) for d in detections) for k, c in zip(prompt.kinds, prompt.colors))
