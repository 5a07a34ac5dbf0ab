"""Tiny image-caption datasets of every source kind, with one malformed record of each kind.

``build_items()`` gives the pairs (file name, image bytes, caption) and what preparation
must make of each; ``write_folder`` / ``write_coco`` / ``write_wds`` lay them out on disk.
Images are small (about 40 px) so that a whole dataset prepares in a second or two.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

MISSING = object()  # no caption field at all
LONG_CAPTION = "a red circle " + " ".join(f"next to a blue square number {i}" for i in range(40))
BOMB_PIXELS = 1_000_000  # tests run with ImagePolicy(max_pixels=BOMB_PIXELS)


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """One torch thread in the data tests: their batches are tiny, and on a busy 2-core machine
    two threads spin against each other (tiny convolutions measured 30x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass
class Item:
    name: str  # image file name (or member name)
    image: bytes | None  # None: the file does not exist
    caption: object  # str, bytes (raw, maybe not UTF-8), or MISSING
    skip: str | None = None  # expected Skip reason
    fixes: list[str] = field(default_factory=list)  # expected Fix values


def picture(i: int, w: int = 44, h: int = 36) -> np.ndarray:
    """A simple distinct picture: a gradient and a coloured rectangle whose place depends on i."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x * 255 // max(1, w - 1)), (y * 255 // max(1, h - 1)), np.full_like(x, (37 * i) % 256)], -1)
    x0, y0 = (5 * i) % (w // 2), (3 * i) % (h // 2)
    img[y0 : y0 + h // 3, x0 : x0 + w // 3] = [(80 * i) % 256, 200, (50 * i) % 256]
    return img.astype(np.uint8)


def encode(img: Image.Image | np.ndarray, fmt: str = "PNG", **kw) -> bytes:
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def build_items(n_good: int = 8) -> list[Item]:
    items = [
        Item(
            f"good{i:02d}.{'jpg' if i % 2 else 'png'}",
            encode(picture(i), "JPEG" if i % 2 else "PNG"),
            f"a picture number {i} of a rectangle",
        )
        for i in range(n_good)
    ]
    jpeg = encode(picture(99), "JPEG")
    rgba = np.dstack([picture(5), np.where(np.arange(44)[None, :] < 20, 0, 255).repeat(36, 0)]).astype(np.uint8)
    items += [
        Item("truncated.jpg", jpeg[: len(jpeg) * 2 // 3], "a truncated photo", skip="truncated"),
        Item("empty.png", b"", "an empty file", skip="empty_file"),
        Item("notimage.png", b"this is not an image at all", "a text file", skip="unreadable"),
        Item("bomb.png", encode(Image.new("1", (1200, 1000))), "a decompression bomb", skip="decompression_bomb"),
        Item("wide.png", encode(picture(7, 200, 20)), "a very wide strip", skip="extreme_aspect"),
        Item("nocaption.png", encode(picture(8)), MISSING, skip="missing_caption"),
        Item("blank.png", encode(picture(9)), "  \n\t ", skip="empty_caption"),
        Item("latin1.png", encode(picture(10)), "caf\xe9 au lait".encode("latin-1"), skip="non_utf8_caption"),
        Item("gone.png", None, "a file that does not exist", skip="missing_file"),
        Item(
            "cmyk.jpg",
            encode(Image.fromarray(picture(11)).convert("CMYK"), "JPEG"),
            "a cmyk photo",
            fixes=["cmyk_converted"],
        ),
        Item(
            "deep.png",
            encode(picture(12)[..., 0].astype(np.uint16) * 257),
            "a sixteen bit scan",
            fixes=["high_bit_depth_scaled"],
        ),
        Item(
            "palette.png",
            encode(Image.fromarray(picture(13)).convert("P")),
            "a palette drawing",
            fixes=["palette_converted"],
        ),
        Item("alpha.png", encode(rgba), "a cut-out on transparency", fixes=["alpha_composited"]),
        Item("small.png", encode(picture(14, 16, 16)), "a small thumbnail", fixes=["upsampled"]),
        Item("long.png", encode(picture(15)), LONG_CAPTION, fixes=["caption_truncated"]),
        Item("left.png", encode(picture(16)), "a square to the left of a circle"),
    ]
    return items


def _caption_text(c) -> str:
    return c.decode("utf-8", "surrogateescape") if isinstance(c, bytes) else c


def write_folder(root: Path, items: list[Item], bad_line: bool = True) -> Path:
    """images/ + metadata.jsonl (one unparsable line when ``bad_line``); returns the folder."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    lines = []
    for it in items:
        if it.image is not None:
            (root / "images" / it.name).write_bytes(it.image)
        rec = {"image": f"images/{it.name}"}
        if it.caption is not MISSING:
            rec["caption"] = _caption_text(it.caption)
        # Non-UTF-8 bytes go into the file as they are, which json.dumps cannot do by itself.
        line = json.dumps(rec, ensure_ascii=False).encode("utf-8", "surrogateescape")
        lines.append(line)
        if bad_line and len(lines) == 3:
            lines.append(b'{"image": "images/good00.png", "caption": ')  # a cut-off line
    (root / "metadata.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return root


def write_coco(root: Path, items: list[Item]) -> Path:
    """annotations/captions_train2014.json + train2014/; returns the annotation file.

    The good images get two captions each (COCO has five); one annotation names an unknown
    image. Non-UTF-8 text cannot live in a JSON file, so that caption is a lone surrogate."""
    (root / "train2014").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    images, anns = [], []
    for i, it in enumerate(items):
        if it.image is not None:
            (root / "train2014" / it.name).write_bytes(it.image)
        images.append({"id": i, "file_name": it.name})
        ann = {"id": 1000 + i, "image_id": i}
        if it.caption is not MISSING:
            ann["caption"] = _caption_text(it.caption)
        anns.append(ann)
        if it.name.startswith("good"):
            anns.append({"id": 2000 + i, "image_id": i, "caption": f"another caption for picture {i}"})
    anns.append({"id": 9999, "image_id": 12345, "caption": "an annotation of an unknown image"})
    path = root / "annotations" / "captions_train2014.json"
    path.write_text(json.dumps({"images": images, "annotations": anns}))
    return path


def write_wds(root: Path, items: list[Item], per_shard: int = 7, broken: bool = True) -> list[Path]:
    """``shard-00000.tar`` ...; plus one sample without an image and a truncated last shard."""
    root.mkdir(parents=True, exist_ok=True)
    shards = []
    samples = [
        (f"{i:05d}", it) for i, it in enumerate(items) if it.image is not None
    ]  # a missing file cannot be in a tar
    for s in range(0, len(samples), per_shard):
        path = root / f"shard-{s // per_shard:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for key, it in samples[s : s + per_shard]:
                ext = it.name.rsplit(".", 1)[1]
                members = {ext: it.image}
                if it.caption is not MISSING:
                    c = it.caption
                    members["txt"] = c if isinstance(c, bytes) else c.encode("utf-8")
                for e, data in members.items():
                    info = tarfile.TarInfo(f"{key}.{e}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
            if s == 0:
                info = tarfile.TarInfo("noimage.txt")
                info.size = 9
                tar.addfile(info, io.BytesIO(b"a caption"))
        shards.append(path)
    if broken:
        path = root / f"shard-{len(shards):05d}.tar"
        with tarfile.open(path, "w") as tar:
            for j in range(3):
                data = encode(picture(40 + j))
                for e, payload in (("png", data), ("txt", f"a broken-shard picture {j}".encode())):
                    info = tarfile.TarInfo(f"b{j}.{e}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        with tarfile.open(path) as tar:
            last = tar.getmembers()[-2]  # the third picture
        path.write_bytes(path.read_bytes()[: last.offset_data + last.size // 2])  # cut inside it
        shards.append(path)
    return shards


def fake_coco(root: Path, n: int = 6) -> tuple[Path, Path]:
    """A COCO-2014-style validation set: ``val2014/`` with ``n`` captioned JPEGs (three
    captions each) and ``captions.json``, which also lists one image without captions.
    Returns (captions file, images folder)."""
    images = root / "val2014"
    images.mkdir()
    data = {"images": [], "annotations": []}
    for i in range(n):
        name = f"COCO_val2014_{i:012d}.jpg"
        Image.new("RGB", (40 + 4 * i, 30), (10 * i, 100, 200)).save(images / name)
        data["images"].append({"id": 100 + i, "file_name": name})
        data["annotations"] += [{"image_id": 100 + i, "caption": f"photo {i} caption {c}"} for c in range(3)]
    data["images"].append({"id": 999, "file_name": "uncaptioned.jpg"})
    (root / "captions.json").write_text(json.dumps(data))
    return root / "captions.json", images
