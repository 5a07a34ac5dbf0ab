"""Where image-caption pairs come from, for preparing caches and for streaming raw training.

- :class:`FolderSource`  a folder of images + a JSONL index of ``{"image": relative path, "caption": text}``
- :class:`CocoSource`    COCO captions: an images folder + ``captions_*.json`` (one record per caption)
- :class:`WdsSource`     WebDataset tar shards (local paths, brace patterns, globs, ``pipe:`` and URLs):
                         ``jpg``/``png``/... + ``txt``/``json`` (tar reading: :mod:`fluid.data.tar`)
- :class:`ShapesSource`  the built-in shapes, rendered at the target resolution

A source is split into *units* in a fixed order: chunks of ``shard_size`` records for the
indexed sources, one unit per tar file for WebDataset. Preparation writes one cache shard per
unit (so a restart redoes at most the units in flight); streaming shuffles units per epoch.
Sources are plain picklable objects: worker processes get a copy.

The contract they share (:class:`~fluid.data.records.Source`: units, records, skips) lives
with the records in :mod:`fluid.data.records`; the four kinds are read side by side here, each
under 100 lines, and :func:`open_source` chooses among them.
"""

from __future__ import annotations

import functools
import json
import os
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fluid.data import tar
from fluid.data.records import IndexedSource, RawRecord, Skip, Source, SourceKind
from fluid.data.tar import RemoteShard, expand_shards
from fluid.files import file_digest


def image_path(root: Path, name: str, outside_root: bool = False) -> str | None:
    """``root / name``, or None when ``name`` leads out of ``root`` (an absolute path, or one
    through ``..``) and ``outside_root`` does not allow it: an index, often downloaded with
    the data, must not make the loader open any file the user can read. The check is on the
    path's text, so links inside ``root`` (a data folder on another disk) are followed."""
    path = os.path.normpath(os.path.join(root, name))
    if outside_root or path.startswith(os.path.join(str(root), "")):
        return path
    return None


def _outside(where: str, name: str, root: Path) -> tuple:
    return (
        Skip.OUTSIDE_ROOT,
        f"{where}: image path {name!r} leads outside the images folder {root} "
        f"(allow it with data.images_outside_root=true / --images-outside-root)",
    )


class FolderSource(IndexedSource):
    """``path``: a JSONL file, or a folder holding one (``metadata.jsonl``, ``captions.jsonl``
    or the only ``*.jsonl``). Image paths are relative to ``images`` (default: the JSONL's folder)
    and must stay inside it (:attr:`Skip.OUTSIDE_ROOT` otherwise) unless ``outside_root``.

    Each non-blank line is a record; a line that is not a JSON object with an ``image`` string
    becomes a :attr:`Skip.BAD_METADATA` record. The caption is ``caption`` (or ``text``).
    Lines are decoded with ``surrogateescape`` so that one bad byte sequence rejects only its
    own caption (:attr:`Skip.NON_UTF8_CAPTION`), not the whole index.
    """

    kind = SourceKind.FOLDER

    def __init__(
        self,
        path: str | os.PathLike,
        images: str | os.PathLike | None = None,
        shard_size: int = 1000,
        outside_root: bool = False,
    ):
        path = Path(path)
        if path.is_dir():
            path = self._find_index(path)
        if not path.is_file():
            raise FileNotFoundError(f"folder source: index file {path} does not exist")
        self.index = path.resolve()
        self.root = Path(images).resolve() if images else self.index.parent
        self.outside_root = outside_root
        if not self.root.is_dir():
            raise FileNotFoundError(f"folder source: images folder {self.root} does not exist")
        super().__init__(self._parse(), shard_size)

    @staticmethod
    def _find_index(folder: Path) -> Path:
        for name in ("metadata.jsonl", "captions.jsonl"):
            if (folder / name).is_file():
                return folder / name
        found = sorted(folder.glob("*.jsonl"))
        if len(found) != 1:
            raise FileNotFoundError(
                f"folder source: {folder} must hold metadata.jsonl, captions.jsonl or exactly one *.jsonl "
                f"(found {len(found)}); or pass the JSONL file itself as the path"
            )
        return found[0]

    def _parse(self) -> list[RawRecord]:
        records = []
        with open(self.index, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                line = raw.decode("utf-8", errors="surrogateescape").strip()
                if not line:
                    continue
                key = f"line{lineno}"
                try:
                    item = json.loads(line)
                except json.JSONDecodeError as e:
                    records.append(RawRecord(key, error=(Skip.BAD_METADATA, f"line {lineno}: not JSON ({e.msg})")))
                    continue
                image = item.get("image") if isinstance(item, dict) else None
                if not isinstance(image, str) or not image:
                    records.append(RawRecord(key, error=(Skip.BAD_METADATA, f"line {lineno}: no 'image' path")))
                    continue
                caption = item.get("caption", item.get("text"))
                path = image_path(self.root, image, self.outside_root)
                if path is None:
                    records.append(RawRecord(f"{key}:{image}", error=_outside(f"line {lineno}", image, self.root)))
                    continue
                records.append(RawRecord(f"{key}:{image}", caption, path=path, image_id=image))
        return records

    def describe(self) -> dict:
        return {
            "kind": self.kind.value,
            "index": str(self.index),
            "images": str(self.root),
            "index_sha256": file_digest(self.index),
            "records": len(self.records),
            "shard_size": self.shard_size,
            **({"outside_root": True} if self.outside_root else {}),
        }


class CocoSource(IndexedSource):
    """COCO captions: ``path`` is ``captions_<split>.json``; images live in ``images`` (default:
    a ``<split>`` or ``images/<split>`` folder next to the annotations folder or inside it).

    One record per caption annotation, ordered by (image id, annotation id) so that an image's
    captions are neighbours (decoded and encoded once per batch). An annotation naming an
    unknown image is :attr:`Skip.BAD_METADATA`; images without captions are not records.
    """

    kind = SourceKind.COCO

    def __init__(
        self,
        path: str | os.PathLike,
        images: str | os.PathLike | None = None,
        shard_size: int = 1000,
        outside_root: bool = False,
    ):
        self.annotations = Path(path).resolve()
        self.outside_root = outside_root
        if not self.annotations.is_file():
            raise FileNotFoundError(f"coco source: annotation file {self.annotations} does not exist")
        try:
            data = json.loads(self.annotations.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"coco source: {self.annotations} is not a UTF-8 JSON file ({e})") from None
        if not (
            isinstance(data, dict)
            and isinstance(data.get("annotations"), list)
            and isinstance(data.get("images"), list)
        ):
            raise ValueError(f"coco source: {self.annotations} has no 'images' and 'annotations' lists")
        self.root = Path(images).resolve() if images else self._find_images()
        if not self.root.is_dir():
            raise FileNotFoundError(f"coco source: images folder {self.root} does not exist")
        super().__init__(self._records(data), shard_size)

    def _find_images(self) -> Path:
        stem = self.annotations.stem
        split = stem.split("_", 1)[1] if "_" in stem else stem  # captions_train2014 -> train2014
        here, up = self.annotations.parent, self.annotations.parent.parent
        tried = [up / split, here / split, up / "images" / split, here / "images" / split]
        for folder in tried:
            if folder.is_dir():
                return folder.resolve()
        raise FileNotFoundError(
            f"coco source: no images folder found for {self.annotations.name} (tried "
            f"{', '.join(str(t) for t in tried)}); pass it with --images / data.images"
        )

    def _records(self, data: dict) -> list[RawRecord]:
        files = {im.get("id"): im.get("file_name") for im in data["images"] if isinstance(im, dict)}
        anns = [a for a in data["annotations"] if isinstance(a, dict)]
        order = lambda v: (0, v, "") if isinstance(v, int) else (1, 0, str(v))  # noqa: E731  numeric ids numerically
        anns.sort(key=lambda a: (order(a.get("image_id")), order(a.get("id"))))
        records = []
        for a in anns:
            key = f"ann{a.get('id')}"
            name = files.get(a.get("image_id"))
            if not isinstance(name, str) or not name:
                why = f"annotation {a.get('id')}: unknown image_id {a.get('image_id')!r}"
                records.append(RawRecord(key, error=(Skip.BAD_METADATA, why)))
                continue
            path = image_path(self.root, name, self.outside_root)
            if path is None:
                records.append(RawRecord(f"{key}:{name}", error=_outside(f"annotation {a.get('id')}", name, self.root)))
                continue
            records.append(RawRecord(f"{key}:{name}", a.get("caption"), path=path, image_id=name))
        return records

    def describe(self) -> dict:
        return {
            "kind": self.kind.value,
            "annotations": str(self.annotations),
            "images": str(self.root),
            "annotations_sha256": file_digest(self.annotations),
            "records": len(self.records),
            "shard_size": self.shard_size,
            **({"outside_root": True} if self.outside_root else {}),
        }


class WdsSource(Source):
    """WebDataset tar shards (:mod:`fluid.data.tar`). A sample's image is its first member with
    an image extension; its caption is the ``txt`` member, else ``caption``/``text`` in ``json``.
    A tar that breaks mid-way yields the samples before the break, then one
    :attr:`Skip.BROKEN_SHARD` record.

    Random access when every shard is a local, uncompressed tar: :meth:`get` seeks to one
    sample's bytes, found in an index of the shard's headers (two int64 per sample) that
    each process builds the first time it reads from that shard. Remote shards (``pipe:``,
    URLs) and compressed tars cannot be seeked: they are read sequentially only."""

    kind = SourceKind.WDS
    sizes_known = False
    INDEXES = 64  # shard indexes kept per process (least recently used dropped)

    def __init__(self, pattern: str | os.PathLike | list):
        self.pattern = pattern
        self.shards = expand_shards(pattern)
        self._sizes: list[int] | None = None
        self._indexes: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    @functools.cached_property
    def random_access(self) -> bool:
        return all(tar.seekable(p) for p in self.shards)

    def units(self) -> list[str]:
        return [p.name for p in self.shards]

    def sizes(self) -> list[int]:
        if self._sizes is None:
            self._sizes = [self._count(p) for p in self.shards]
        return self._sizes

    @staticmethod
    def _count(path: Path | RemoteShard) -> int:
        """Samples in a tar from its headers alone (seeks over the data; a remote shard is
        streamed through once)."""
        return len(tar.scan(path)[0])

    def read(self, unit: int, start: int = 0) -> Iterator[RawRecord]:
        path, i = self.shards[unit], 0
        for sample, error in tar.samples(path):
            if sample is not None:
                if i >= start:
                    yield tar.sample_record(path, sample)
                i += 1
            if error is not None:
                yield tar.broken_record(path, i, error)

    def get(self, unit: int, index: int) -> RawRecord:
        if not self.random_access:
            return super().get(unit, index)
        path = self.shards[unit]
        if unit not in self._indexes:
            self._indexes[unit] = tar.scan(path)
            while len(self._indexes) > self.INDEXES:
                self._indexes.popitem(last=False)
        self._indexes.move_to_end(unit)
        starts, ends = self._indexes[unit]
        if index >= len(starts):
            return tar.broken_record(path, len(starts), EOFError(f"{len(starts)} samples, not {index + 1}"))
        sample, error = tar.read_sample(path, int(starts[index]), int(ends[index]))
        return tar.sample_record(path, sample) if sample is not None else tar.broken_record(path, index, error)

    def __getstate__(self):  # a copy (a DataLoader worker's) builds its own indexes
        return {**self.__dict__, "_indexes": OrderedDict()}

    def describe(self) -> dict:
        return {
            "kind": self.kind.value,
            "shards": [str(p) for p in self.shards],
            "bytes": [None if isinstance(p, RemoteShard) else p.stat().st_size for p in self.shards],
        }


class ShapesSource(IndexedSource):
    """The built-in shapes (``count`` items of ``split``), rendered at the target resolution."""

    kind = SourceKind.SHAPES

    def __init__(
        self, count: int, resolution: int, split: str = "train", holdout: bool = False, shard_size: int = 1000
    ):
        from fluid.shapes.dataset import ShapesDataset

        if count < 1:
            raise ValueError(f"shapes source: count must be >= 1, not {count}")
        self.dataset = ShapesDataset(split, resolution, holdout=holdout, size=count)
        self.count, self.resolution, self.split = count, resolution, split
        super().__init__([], shard_size)

    def units(self) -> list[str]:
        return [f"{s}-{min(self.count, s + self.shard_size)}" for s in range(0, self.count, self.shard_size)]

    def sizes(self) -> list[int]:
        return [min(self.count, s + self.shard_size) - s for s in range(0, self.count, self.shard_size)]

    def _render(self, indices: list[int]) -> list[RawRecord]:
        images, captions = self.dataset.batch(indices)  # (n, 3, R, R) in [-1, 1]
        arr = ((images + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()  # (n, R, R, 3)
        return [
            RawRecord(f"shapes/{self.split}/{i}", c, array=np.ascontiguousarray(a))
            for i, c, a in zip(indices, captions, arr)
        ]

    def read(self, unit: int, start: int = 0) -> Iterator[RawRecord]:
        first = unit * self.shard_size + start
        last = min(self.count, (unit + 1) * self.shard_size)
        for s in range(first, last, 256):
            yield from self._render(list(range(s, min(last, s + 256))))

    def get(self, unit: int, index: int) -> RawRecord:
        return self._render([unit * self.shard_size + index])[0]

    def describe(self) -> dict:
        return {
            "kind": self.kind.value,
            "split": self.split,
            "count": self.count,
            "holdout": self.dataset.holdout,
            "shard_size": self.shard_size,
        }


def open_source(
    kind: str | SourceKind,
    path: str | os.PathLike | None,
    *,
    images: str | None = None,
    shard_size: int = 1000,
    count: int | None = None,
    resolution: int = 64,
    split: str = "train",
    holdout: bool = False,
    outside_root: bool = False,
) -> Source:
    """A source by kind. ``count`` is required for ``shapes``; ``outside_root`` lets a folder or
    COCO index name images outside its images folder."""
    try:
        kind = SourceKind(kind)
    except ValueError:
        raise ValueError(f"unknown source {kind!r}; choose one of {', '.join(k.value for k in SourceKind)}") from None
    if kind == SourceKind.SHAPES:
        if count is None:
            raise ValueError("the shapes source needs a count (how many items to prepare)")
        return ShapesSource(count, resolution, split, holdout, shard_size)
    if path is None:
        raise ValueError(f"the {kind.value} source needs a path (data.path / --path)")
    if kind == SourceKind.FOLDER:
        return FolderSource(path, images, shard_size, outside_root)
    if kind == SourceKind.COCO:
        return CocoSource(path, images, shard_size, outside_root)
    return WdsSource(path)
