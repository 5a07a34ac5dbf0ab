"""Robust image loading: bytes or a file -> a square RGB uint8 array at the training
resolution (center crop + resize, the paper's default), or a :class:`RecordError` naming why not.

Every odd image Pillow can open is turned into plain 8-bit RGB on purpose rather than by
accident: CMYK is converted, 16-bit samples are scaled (``convert("L")`` would clip them),
palettes are expanded, transparency is composited on a background colour (white by default),
EXIF rotation is applied. Each repair is reported as a :class:`Fix`.
"""

from __future__ import annotations

import enum
import io
import math
import os
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fluid.data.records import Decoded, Fix, RawRecord, RecordError, Rejected, Skip, clean_caption


class SmallImages(str, enum.Enum):
    """What to do with an image whose short side is below the resolution."""

    UPSAMPLE = "upsample"
    SKIP = "skip"


@dataclass(frozen=True)
class ImagePolicy:
    resolution: int = 64
    small: SmallImages = SmallImages.UPSAMPLE
    max_aspect: float = 4.0
    """Skip images whose long side exceeds this many times the short side (0: no limit):
    a center crop would keep too little of them."""
    max_pixels: int = 89_478_485
    """Skip images with more pixels than this (a decompression bomb); the default is Pillow's.
    Checked from the header, before decoding; Pillow's own limit does not apply here."""
    background: tuple[int, int, int] = (255, 255, 255)
    """RGB colour that transparent pixels are composited on."""

    def __post_init__(self):
        object.__setattr__(self, "small", SmallImages(self.small))
        object.__setattr__(self, "background", tuple(int(c) for c in self.background))
        if self.resolution < 1:
            raise ValueError(f"resolution must be positive, not {self.resolution}")
        if self.max_aspect and self.max_aspect < 1:
            raise ValueError(f"max_aspect must be >= 1 (or 0 for no limit), not {self.max_aspect}")
        if len(self.background) != 3 or not all(0 <= c <= 255 for c in self.background):
            raise ValueError(f"background must be three integers in [0, 255], not {self.background}")

    @classmethod
    def from_data_config(cls, cfg, **overrides) -> ImagePolicy:
        kw = dict(resolution=cfg.resolution, small=cfg.small_images, max_aspect=cfg.max_aspect)
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kw)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["small"], d["background"] = self.small.value, list(self.background)
        return d


_HIGH_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}


def _to_rgb(im: Image.Image, background: tuple[int, int, int], fixes: list[Fix]) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB, recording what was done."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in _HIGH_BIT:
        a = np.asarray(im, dtype=np.float64)
        if mode.startswith("I;16") or (mode == "I" and a.max(initial=0) > 255):
            a = a / 257.0  # 0..65535 -> 0..255
        elif mode == "F" and a.max(initial=0) <= 1.0:
            a = a * 255.0  # float images in [0, 1]
        fixes.append(Fix.HIGH_BIT_DEPTH)
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "CMYK":
        fixes.append(Fix.CMYK)
        return im.convert("RGB")
    if mode in ("P", "PA"):
        fixes.append(Fix.PALETTE)
        im = im.convert("RGBA" if (mode == "PA" or "transparency" in im.info) else "RGB")
        mode = im.mode
    elif mode in ("L", "1") and "transparency" in im.info:
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "La", "RGBa"):
        im = im.convert("RGBA")
        alpha = np.asarray(im.getchannel("A"))
        if alpha.min(initial=255) < 255:  # only count images with real transparency
            fixes.append(Fix.ALPHA)
        canvas = Image.new("RGBA", im.size, background + (255,))
        return Image.alpha_composite(canvas, im).convert("RGB")
    if mode != "RGB":
        fixes.append(Fix.MODE)
        im = im.convert("RGB")
    return im


def load_image(source: bytes | str | os.PathLike, policy: ImagePolicy) -> tuple[np.ndarray, list[Fix]]:
    """Decode, convert to RGB, center crop and resize to ``policy.resolution``.

    Returns ``(image (R, R, 3) uint8, fixes)``; raises :class:`RecordError` for a bad image.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise RecordError(Skip.EMPTY_FILE, "zero bytes")
        fp, name = io.BytesIO(source), "image bytes"
    else:
        name = os.fspath(source)
        try:
            size = os.path.getsize(name)
        except FileNotFoundError:
            raise RecordError(Skip.MISSING_FILE, f"{name} does not exist") from None
        except OSError as e:
            raise RecordError(Skip.UNREADABLE, f"{name}: {e}") from None
        if size == 0:
            raise RecordError(Skip.EMPTY_FILE, f"{name} has zero bytes")
        fp = name
    fixes: list[Fix] = []
    pillow_limit = Image.MAX_IMAGE_PIXELS
    try:
        # Pillow warns above its MAX_IMAGE_PIXELS and refuses above twice that, in its own words
        # and by its own number; ``policy.max_pixels`` is the limit here, checked as soon as the
        # header gives the size (before any pixel is decoded), so Pillow's is off meanwhile.
        Image.MAX_IMAGE_PIXELS = None
        im = Image.open(fp)
        w, h = im.size
        if w * h > policy.max_pixels:
            raise RecordError(Skip.DECOMPRESSION_BOMB, f"{w}x{h} = {w * h} pixels > max_pixels={policy.max_pixels}")
        if min(w, h) < 1:
            raise RecordError(Skip.UNREADABLE, f"image size {w}x{h}")
        short = min(w, h)
        if policy.max_aspect and max(w, h) / short > policy.max_aspect:
            raise RecordError(
                Skip.EXTREME_ASPECT, f"{w}x{h}, aspect {max(w, h) / short:.2f} > max_aspect={policy.max_aspect}"
            )
        r = policy.resolution
        if short < r and policy.small == SmallImages.SKIP:
            raise RecordError(Skip.TOO_SMALL, f"{w}x{h}, short side below the resolution {r}")
        if im.format == "JPEG" and short > 2 * r:
            # Let the JPEG decoder downscale by a power of two (DCT scaling): much faster on
            # large photos, and it never goes below the requested size.
            im.draft("RGB", (math.ceil(w * r / short), math.ceil(h * r / short)))
        im.load()
        im = ImageOps.exif_transpose(im)
        im = _to_rgb(im, policy.background, fixes)
        return center_crop_resize(im, r, fixes), fixes  # Pillow checks a crop's size against its limit too
    except RecordError:
        raise
    except Image.DecompressionBombError:
        raise RecordError(Skip.DECOMPRESSION_BOMB, f"{name}: more pixels than max_pixels={policy.max_pixels}") from None
    except UnidentifiedImageError:
        raise RecordError(Skip.UNREADABLE, f"{name}: not an image Pillow can identify") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        reason = Skip.TRUNCATED if "truncated" in str(e).lower() else Skip.UNREADABLE
        raise RecordError(reason, f"{name}: {e}") from None
    except Exception as e:  # any decoder failure is a bad record, never a crash
        raise RecordError(Skip.UNREADABLE, f"{name}: {type(e).__name__}: {e}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = pillow_limit


def center_crop_resize(im: Image.Image, resolution: int, fixes: list[Fix] | None = None) -> np.ndarray:
    """The largest centred square, resized to ``resolution`` (bicubic, antialiased)."""
    w, h = im.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    if s < resolution and fixes is not None:
        fixes.append(Fix.UPSAMPLED)
    out = im.crop((left, top, left + s, top + s))  # crop first: no filter support reaches outside the square
    if s != resolution:
        out = out.resize((resolution, resolution), Image.Resampling.BICUBIC)
    return np.asarray(out, dtype=np.uint8).reshape(resolution, resolution, 3)


def decode_record(rec: RawRecord, policy: ImagePolicy) -> Decoded | Rejected:
    """A raw record -> :class:`Decoded` or :class:`Rejected`; never raises on bad data.
    The caption is checked first: it is cheap, and a record without one is useless."""
    if rec.error is not None:
        return Rejected(rec.key, *rec.error)
    try:
        caption = clean_caption(rec.caption)
        if rec.array is not None:
            image, fixes = rec.array, []
            if image.shape != (policy.resolution, policy.resolution, 3) or image.dtype != np.uint8:
                raise RecordError(Skip.UNREADABLE, f"array of shape {image.shape} / {image.dtype}")
        elif rec.data is not None or rec.path is not None:
            image, fixes = load_image(rec.data if rec.data is not None else rec.path, policy)
        else:
            raise RecordError(Skip.BAD_METADATA, "the record names no image")
    except RecordError as e:
        return Rejected(rec.key, e.reason, e.detail)
    return Decoded(rec.key, image, caption, fixes, rec.image_id or rec.key)


def to_tensor(images: np.ndarray):
    """(B, R, R, 3) uint8 -> float (B, 3, R, R) in [-1, 1]."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)  # (B, 3, R, R)
    return x.float() / 127.5 - 1.0
