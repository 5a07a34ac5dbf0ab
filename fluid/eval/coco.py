"""The MS-COCO 2014 zero-shot FID protocol: a fixed-seed sample of caption/image pairs.

From a COCO captions file (``captions_val2014.json``: ``images`` with ``id`` and
``file_name``, ``annotations`` with ``image_id`` and ``caption``) and its images folder,
``sample_coco_pairs`` draws ``n`` distinct images (30,000 by default, as the paper and its
predecessors do) with a seeded generator, and one of each image's captions. The model
generates one image per caption; FID compares those with the sampled real images, centre
cropped and resized to the model's resolution (the reference statistics are cached, keyed
by the exact sample, the resolution and the Inception weights).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

COCO_FID_SIZE = 30_000
COCO_SEED = 0


@dataclasses.dataclass(frozen=True)
class CocoPair:
    image_id: int
    image: Path
    caption: str


def load_coco_captions(path: str | Path) -> tuple[dict[int, str], dict[int, list[str]]]:
    """({image id: file name}, {image id: [captions]}) from a COCO captions JSON file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"COCO captions file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        files = {int(im["id"]): str(im["file_name"]) for im in data["images"]}
        captions: dict[int, list[str]] = {}
        for ann in data["annotations"]:
            captions.setdefault(int(ann["image_id"]), []).append(str(ann["caption"]).strip())
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(
            f"{path} is not a COCO captions file (needs 'images' with id/file_name and "
            f"'annotations' with image_id/caption): {e!r}"
        ) from None
    return files, captions


def sample_coco_pairs(
    captions_file: str | Path, images_dir: str | Path, n: int = COCO_FID_SIZE, seed: int = COCO_SEED
) -> list[CocoPair]:
    """``n`` distinct images (sorted ids, shuffled by ``seed``) with one caption each."""
    files, captions = load_coco_captions(captions_file)
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"COCO images folder {images_dir} does not exist")
    ids = sorted(i for i in files if captions.get(i))
    if n > len(ids):
        raise ValueError(f"asked for {n} pairs but {captions_file} has only {len(ids)} captioned images")
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(ids))[:n]
    pairs = []
    for j in chosen:
        i = ids[int(j)]
        caps = sorted(captions[i])  # sorted: independent of the annotation order in the file
        pairs.append(CocoPair(i, images_dir / files[i], caps[int(rng.integers(len(caps)))]))
    return pairs


def pairs_digest(pairs: list[CocoPair]) -> str:
    """A short hash of the exact sample, for cache keys and the metrics record."""
    h = hashlib.sha256()
    for p in pairs:
        h.update(f"{p.image_id}\t{p.image.name}\t{p.caption}\n".encode())
    return h.hexdigest()[:12]


def load_image(path: str | Path, resolution: int) -> torch.Tensor:
    """(3, R, R) in [-1, 1]: centre crop to a square, resize (bicubic, antialiased)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"COCO image {path} does not exist")
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = min(w, h)
        im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        im = im.resize((resolution, resolution), Image.BICUBIC, reducing_gap=None)
        arr = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy())  # (R, R, 3)
    return arr.permute(2, 0, 1).float() / 127.5 - 1.0


def image_batches(pairs: list[CocoPair], resolution: int, batch_size: int = 64) -> Iterator[torch.Tensor]:
    """The real images of ``pairs`` as (B, 3, R, R) batches."""
    for start in range(0, len(pairs), batch_size):
        yield torch.stack([load_image(p.image, resolution) for p in pairs[start : start + batch_size]])
