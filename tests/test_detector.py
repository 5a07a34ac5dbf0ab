"""The classical shapes detector and GenEval-style scoring: right on renders, also blurred;
silent on noise, blank images and irregular blobs."""

import itertools

import numpy as np
import pytest
import torch

from fluid.shapes.dataset import ShapesDataset
from fluid.shapes.eval.classifier_data import blur_and_noise, ellipses_inside, polygon_inside
from fluid.shapes.eval.detector import UNKNOWN, Detection, detect, detect_batch, name_color, score
from fluid.shapes.render import render
from fluid.shapes.scenes import BACKGROUND, COLORS, FAMILIES, KINDS, Family, SceneSpec, ShapeObject, all_captions

PER_FAMILY = 50


@pytest.fixture(scope="module")
def scenes():
    """PER_FAMILY test-split scenes of each family with their 64 px renders."""
    out = {}
    for family in FAMILIES:
        ds = ShapesDataset("test", families=[family])
        specs = [ds.spec(i) for i in range(PER_FAMILY)]
        out[family] = (specs, render(specs, 64))
    return out


def _accuracy(specs, images) -> float:
    return float(np.mean([score(s, d) for s, d in zip(specs, detect_batch(images))]))


def test_clean_renders_score_per_family(scenes):
    for family, (specs, images) in scenes.items():
        assert _accuracy(specs, images) >= 0.98, family


def test_blurred_noisy_renders_score_per_family(scenes):
    g = torch.Generator().manual_seed(0)
    for family, (specs, images) in scenes.items():
        assert _accuracy(specs, blur_and_noise(images, 1.0, 0.03, g)) >= 0.95, family


def test_detections_locate_and_name_each_object():
    """Every (colour, kind) at the smallest size the data draws, blurred: right kind, colour, place."""
    g = torch.Generator().manual_seed(1)
    specs = [
        SceneSpec(Family.COLORS, "x", [ShapeObject(k, c, 0.3 + 0.4 * (i % 2), 0.35 + 0.3 * (i % 3 == 0), 0.1)])
        for i, (k, c) in enumerate(itertools.product(KINDS, COLORS))
    ]
    for spec, dets in zip(specs, detect_batch(blur_and_noise(render(specs, 64), 1.0, 0.03, g))):
        (o,) = spec.objects
        assert len(dets) == 1, (o, dets)
        d = dets[0]
        assert (d.kind, d.color) == (o.kind, o.color)
        assert abs(d.cx - o.cx) < 1.5 / 64 and abs(d.cy - o.cy) < 1.5 / 64
        x0, y0, x1, y1 = d.bbox
        assert abs((x1 - x0) / 2 - o.half) < 1.5 / 64
        assert 0.0 < d.area < 4 * o.half**2 and 0.8 < d.score <= 1.0


def test_other_resolutions():
    for res in (32, 128):
        ds = ShapesDataset("test", resolution=res)
        specs = [ds.spec(i) for i in range(24)]
        assert _accuracy(specs, ds.batch(range(24))[0]) >= 0.9, res


def test_noise_and_blank_images_score_nothing():
    g = torch.Generator().manual_seed(2)
    bg = (torch.tensor(BACKGROUND, dtype=torch.float32) / 127.5 - 1).view(1, 3, 1, 1)
    images = torch.cat(
        [
            torch.rand(8, 3, 64, 64, generator=g) * 2 - 1,  # uniform noise
            (0.5 * torch.randn(8, 3, 64, 64, generator=g)).clamp(-1, 1),  # grey Gaussian noise
            bg.expand(4, 3, 64, 64) + 0.03 * torch.randn(4, 3, 64, 64, generator=g),  # blank + noise
            torch.full((2, 3, 64, 64), -1.0),  # black
            torch.full((2, 3, 64, 64), 1.0),  # white
        ]
    )
    captions = all_captions()
    for dets in detect_batch(images):
        assert all(d.kind == UNKNOWN for d in dets)
        assert not any(score(c, dets) for c in captions)


# ----------------------------------------------------------------------------- irregular blobs


def _paint(inside, rng: np.random.Generator, res: int = 64, ss: int = 4) -> torch.Tensor:
    """An image of the region ``inside(x, y)`` (normalised coords), 4x4 supersampled."""
    t = (np.arange(res * ss) + 0.5) / (res * ss)
    x, y = np.meshgrid(t, t)
    cov = inside(x, y).reshape(res, ss, res, ss).mean((1, 3))[..., None]  # (res, res, 1)
    bg = np.array(BACKGROUND) / 255
    fg = np.array(COLORS[rng.choice(list(COLORS))]) / 255
    img = bg + cov * (fg - bg)  # (res, res, 3)
    return torch.from_numpy(img).permute(2, 0, 1).float() * 2 - 1


def _two_ellipses(rng: np.random.Generator) -> torch.Tensor:
    parts = []
    cx, cy = rng.uniform(0.35, 0.65, 2)
    for k in range(2):
        off = rng.uniform(-0.12, 0.12, 2) if k else (0.0, 0.0)
        parts.append((cx + off[0], cy + off[1], rng.uniform(0.08, 0.25), rng.uniform(0.05, 0.2), rng.uniform(0, np.pi)))
    return _paint(ellipses_inside(parts), rng)


def _jagged_polygon(rng: np.random.Generator) -> torch.Tensor:
    n = int(rng.integers(6, 13))
    ang = np.sort(rng.uniform(0, 2 * np.pi, n))
    rad = rng.uniform(0.1, 0.28) * rng.uniform(0.45, 1.0, n)
    cx, cy = rng.uniform(0.35, 0.65, 2)
    return _paint(polygon_inside(cx + rad * np.cos(ang), cy + rad * np.sin(ang)), rng)


@pytest.mark.parametrize("make", [_two_ellipses, _jagged_polygon])
def test_irregular_blobs_are_not_filed_under_a_kind(make):
    rng = np.random.default_rng(3)
    images = torch.stack([make(rng) for _ in range(60)])
    dets = detect_batch(images)
    named = np.mean([any(d.kind != UNKNOWN for d in ds) for ds in dets])
    assert named <= 0.2
    assert all(d.color != UNKNOWN for ds in dets for d in ds)  # flat colours are still named
    single = [c for c in all_captions() if c.count(" ") == 1 and c.split()[1] in KINDS]  # "a circle", ...
    assert np.mean([score(c, ds) for ds in dets for c in single]) <= 0.2 / len(KINDS)


# ----------------------------------------------------------------------------- scoring rules


def _det(kind, color="red", cx=0.5, cy=0.5):
    return Detection(kind, color, cx, cy, 0.05, 0.95, (cx - 0.1, cy - 0.1, cx + 0.1, cy + 0.1))


def test_score_rules():
    circle, square = _det("circle", "blue", 0.3, 0.5), _det("square", "red", 0.7, 0.5)
    blob = _det(UNKNOWN, "red", 0.5, 0.2)
    assert score("a circle", [circle, blob]) and not score("a circle", [blob])
    assert not score("a circle", [circle, blob], strict=True) and score("a circle", [circle], strict=True)
    assert score("a circle and a square", [square, circle]) and not score("a circle and a triangle", [circle, square])
    assert score("two circles", [circle, _det("circle", "blue", 0.7, 0.5), square])
    assert not score("two circles", [circle]) and not score("two circles", [circle] * 3)
    assert score("a blue circle", [circle]) and not score("a red circle", [circle])
    pair = [circle, square]
    assert score("a circle left of a square", pair) and score("a square right of a circle", pair)
    assert not score("a circle right of a square", pair) and not score("a circle above a square", pair)
    near = _det("square", "red", 0.33, 0.52)  # offset below POSITION_MARGIN: no relation holds
    assert not any(score(f"a circle {r} a square", [circle, near]) for r in ("left of", "right of", "above", "below"))
    low = _det("square", "red", 0.45, 0.9)  # dominant axis is vertical
    assert score("a circle above a square", [circle, low]) and not score("a circle left of a square", [circle, low])
    assert score("a blue circle and a red square", [circle, square])
    assert not score("a red circle and a blue square", [circle, square])
    assert score(ShapesDataset("test").spec(3), [_det("circle", "red")])  # spec 3 is "a red circle"
    with pytest.raises(ValueError):
        score("a photo of a dog", [circle])


def test_name_color_and_bad_input():
    for name, rgb in COLORS.items():
        assert name_color(np.array(rgb) / 255) == name
        assert name_color(0.6 * np.array(rgb) / 255 + 0.4 * np.array(BACKGROUND) / 255) == name  # blurred edge
    assert name_color((0.5, 0.5, 0.5)) == UNKNOWN and name_color((0.1, 0.8, 0.8)) == UNKNOWN  # grey, cyan
    with pytest.raises(ValueError, match="detect"):
        detect(torch.zeros(64, 64))
    with pytest.raises(ValueError, match="detect_batch"):
        detect_batch(torch.zeros(3, 64, 64))


def test_the_classifier_patches_file_is_reused_only_for_the_same_scenes(tmp_path, monkeypatch):
    import fluid.shapes.eval.classifier_data as shape_data
    from fluid.shapes.eval.classifier import CLASSES, PATCH
    from fluid.shapes.eval.train_classifier import train

    calls = []

    def patches(images, seed=0, progress=True):  # a stand-in for minutes of rendering
        calls.append((dict(images), seed))
        g = torch.Generator().manual_seed(seed)
        return torch.rand(40, 2, PATCH, PATCH, generator=g), torch.randint(len(CLASSES), (40,), generator=g)

    monkeypatch.setattr(shape_data, "training_patches", patches)
    file = tmp_path / "patches.safetensors"
    for images, seed in [({"render": 2}, 0), ({"render": 2}, 0), ({"render": 2}, 1), ({"render": 3}, 1)]:
        train(
            tmp_path / "clf", epochs=1, batch_size=64, seed=seed, width=4, images=images, patches=file, progress=False
        )
    assert calls == [({"render": 2}, 0), ({"render": 2}, 1), ({"render": 3}, 1)]  # the second run reused the file
