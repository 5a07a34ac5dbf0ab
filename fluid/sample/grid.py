"""Pictures for people: labelled image grids and the random-order progress strip."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

from fluid.sample.pipeline import to_pil

_BG = (255, 255, 255)
_FG = (20, 20, 20)


def _font(size: int = 12):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def image_grid(
    images: Sequence[Image.Image],
    rows: int,
    cols: int,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    scale: int = 2,
    pad: int = 4,
    label_width: int = 220,
) -> Image.Image:
    """Images in row-major order on a white sheet, optionally labelled on the left and top."""
    if len(images) != rows * cols:
        raise ValueError(f"{len(images)} images do not fill a {rows} x {cols} grid")
    w, h = images[0].size
    w, h = w * scale, h * scale
    left = label_width if row_labels else 0
    top = 18 if col_labels else 0
    sheet = Image.new("RGB", (left + cols * (w + pad) + pad, top + rows * (h + pad) + pad), _BG)
    draw, font = ImageDraw.Draw(sheet), _font()
    for j, label in enumerate(col_labels or []):
        draw.text((left + pad + j * (w + pad), 2), label, fill=_FG, font=font)
    for i in range(rows):
        if row_labels:
            draw.text((4, top + pad + i * (h + pad) + h // 2 - 7), row_labels[i][:36], fill=_FG, font=font)
        for j in range(cols):
            img = images[i * cols + j].resize((w, h), Image.NEAREST)
            sheet.paste(img, (left + pad + j * (w + pad), top + pad + i * (h + pad)))
    return sheet


def masked_preview(images: torch.Tensor, known: torch.Tensor, grid: int) -> torch.Tensor:
    """Grey out the image regions of tokens not generated yet.

    images: (B, 3, H, W) decoded from partly known tokens; known: (B, N) bool over a
    ``grid`` x ``grid`` token layout.
    """
    b, _, h, w = images.shape
    mask = known.view(b, 1, grid, grid).float()  # (B, 1, g, g)
    mask = torch.nn.functional.interpolate(mask, size=(h, w), mode="nearest")  # (B, 1, H, W)
    return images * mask + 0.15 * (1 - mask)


def progress_strip(frames: list[torch.Tensor], labels: Sequence[str], step_labels: Sequence[str]) -> Image.Image:
    """frames[k]: (B, 3, H, W) previews after step k; one row per image, one column per step."""
    rows, cols = frames[0].shape[0], len(frames)
    images = [to_pil(frames[k][i : i + 1])[0] for i in range(rows) for k in range(cols)]
    return image_grid(images, rows, cols, row_labels=labels, col_labels=step_labels)
