"""WebDataset tar shards: finding them, the samples they hold, and reading those samples.

A WebDataset sample is a run of consecutive regular members sharing a key: ``dir/abc.jpg``
and ``dir/abc.txt`` are the ``jpg`` and ``txt`` of sample ``dir/abc``. Members without an
extension, non-regular members and keys starting with ``__`` (metadata) belong to no sample.

Two ways to read a shard, which give the same records:

- :func:`samples` streams it from the start (any shard: local, compressed, ``pipe:`` or a URL);
- :func:`scan` lists where each sample's bytes lie (from the headers alone, seeking over the
  data) and :func:`read_sample` then reads one sample by seeking to it, so that a reader
  touches only the samples it needs. That needs a seekable, uncompressed file (:func:`seekable`).

A tar that breaks mid-way (truncated, corrupt) keeps the samples before the break: streamed,
the sample cut by the break comes out with the members read before it, then the error;
by seeking, that sample is the same partial sample, or the error when none of its members
can be read. Nothing after a break can be found in either way.
"""

from __future__ import annotations

import glob
import io
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fluid.data.records import RawRecord, Skip

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif", "ppm")
_ERRORS = (tarfile.TarError, OSError, EOFError)


class RemoteShard:
    """A tar shard read as a stream: ``http(s)://...`` (fetched with urllib) or ``pipe:CMD``
    (the standard output of a shell command, e.g. ``pipe:aws s3 cp s3://b/x.tar -``)."""

    def __init__(self, url: str):
        self.url = url
        self.name = url.rstrip("/").rpartition("/")[2].split("?")[0] or url

    def __str__(self) -> str:
        return self.url

    def __eq__(self, other) -> bool:
        return isinstance(other, RemoteShard) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def open(self):
        if self.url.startswith("pipe:"):
            import subprocess

            return subprocess.Popen(self.url[5:], shell=True, stdout=subprocess.PIPE).stdout
        import urllib.request

        return urllib.request.urlopen(self.url)


def is_remote(item: str) -> bool:
    return item.startswith(("pipe:", "http://", "https://"))


def expand_shards(pattern: str | os.PathLike | list) -> list[Path | RemoteShard]:
    """Shard paths from a folder (its ``*.tar``), brace patterns (``data-{000..099}.tar``),
    globs, remote URLs (``https://host/data-{000..099}.tar``, ``pipe:curl -s URL``), or several
    of these separated by commas / given as a list."""
    import braceexpand

    items = pattern if isinstance(pattern, (list, tuple)) else [p for p in str(pattern).split(",") if p.strip()]
    paths: list[Path] = []
    remote: list[RemoteShard] = []
    for item in items:
        if is_remote(str(item).strip()):
            remote += [RemoteShard(u) for u in braceexpand.braceexpand(str(item).strip())]
            continue
        item = os.path.expanduser(str(item).strip())
        if os.path.isdir(item):
            paths += sorted(Path(item).glob("*.tar"))
            continue
        for name in braceexpand.braceexpand(item):
            if glob.has_magic(name):
                paths += [Path(p) for p in sorted(glob.glob(name))]
            else:
                paths.append(Path(name))
    paths = list(dict.fromkeys(p.resolve() for p in paths))
    if not paths and not remote:
        raise FileNotFoundError(f"wds source: no tar shards match {pattern!r}")
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"wds source: {len(missing)} shard(s) do not exist, e.g. {missing[0]}")
    return paths + list(dict.fromkeys(remote))


def split_name(name: str) -> tuple[str | None, str]:
    """``dir/abc.001.jpg`` -> (``dir/abc``, ``001.jpg``): WebDataset's key/extension rule."""
    folder, _, base = name.rpartition("/")
    if "." not in base:
        return None, ""
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def member_key(info: tarfile.TarInfo) -> tuple[str, str] | None:
    """(key, extension) of a member that belongs to a sample, else None."""
    if not info.isreg():
        return None
    key, ext = split_name(info.name)
    return None if key is None or key.startswith("__") else (key, ext)


def seekable(shard: Path | RemoteShard) -> bool:
    """A local tar that is not compressed: its samples can be read by seeking."""
    if isinstance(shard, RemoteShard):
        return False
    with open(shard, "rb") as f:
        head = f.read(6)
    return not head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x28\xb5\x2f\xfd"))  # gzip, bzip2, xz, zstd


def _open(shard: Path | RemoteShard):
    return shard.open() if isinstance(shard, RemoteShard) else open(shard, "rb")


def scan(shard: Path | RemoteShard) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) byte offsets of every sample, from the headers alone: ``start`` is the
    first header of its first member, ``end`` the end of its last member's data. A local
    tar is seeked over; a remote one is streamed through once (its offsets only count)."""
    starts, ends, last = [], [], None
    try:
        with _open(shard) as f, tarfile.open(fileobj=f, mode="r|*" if isinstance(shard, RemoteShard) else "r:*") as tar:
            while True:
                info = tar.next()
                if info is None:
                    break
                tar.members = []  # keep no TarInfo per member: shards hold many thousands
                km = member_key(info)
                if km is None:
                    continue
                if km[0] != last:
                    starts.append(info.offset)
                    ends.append(0)
                    last = km[0]
                ends[-1] = info.offset_data + info.size
    except _ERRORS:
        pass  # a broken tar: the samples before the break
    return np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)


def _members(tar: tarfile.TarFile, sample: list) -> Iterator[dict]:
    """Samples of an open tar stream; ``sample[0]`` holds the one being read (for the caller
    to keep when the stream breaks)."""
    for info in tar:
        tar.members = []
        km = member_key(info)
        if km is None:
            continue
        key, ext = km
        if sample[0] is not None and key != sample[0]["__key__"]:
            done, sample[0] = sample[0], None
            yield done
        data = tar.extractfile(info).read()
        if sample[0] is None:
            sample[0] = {"__key__": key}
        sample[0].setdefault(ext, data)


def samples(shard: Path | RemoteShard) -> Iterator[tuple[dict | None, Exception | None]]:
    """``(sample, None)`` for every sample of the shard, streamed from its start; where it
    breaks, a last ``(partial sample or None, error)``."""
    current: list = [None]
    try:
        with _open(shard) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for s in _members(tar, current):
                yield s, None
    except Exception as e:  # a truncated or corrupt tar, a failing command: keep what came before
        yield current[0], e
        return
    if current[0] is not None:
        yield current[0], None


def read_sample(path: Path, start: int, end: int) -> tuple[dict | None, Exception | None]:
    """The sample whose bytes are ``[start, end)`` of a local tar (see :func:`scan`):
    ``(sample, None)``, or ``(the members read before the break or None, error)``."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read(end - start)
    except OSError as e:
        return None, e
    current: list = [None]
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tar:
            found = list(_members(tar, current))
    except _ERRORS as e:
        return current[0], e
    if found or current[0] is None:  # two keys, or none: the file changed since it was scanned
        return None, tarfile.ReadError(f"no single sample at bytes {start}-{end}")
    return current[0], None


def sample_record(shard: Path | RemoteShard, sample: dict) -> RawRecord:
    """A sample as a record: its first image member, and ``txt`` (else ``caption``/``text``
    in ``json``) as the caption."""
    key = f"{shard.name}/{sample['__key__']}"
    image = next((sample[e] for e in IMAGE_EXTENSIONS if e in sample), None)
    caption = sample.get("txt")
    if caption is None and "json" in sample:
        try:
            meta = json.loads(sample["json"])
            caption = meta.get("caption", meta.get("text")) if isinstance(meta, dict) else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            caption = None
    if image is None:
        members = ", ".join(k for k in sample if not k.startswith("__"))
        return RawRecord(key, error=(Skip.BAD_METADATA, f"sample has no image member ({members})"))
    return RawRecord(key, caption, data=image, image_id=key)


def broken_record(shard: Path | RemoteShard, i: int, error: Exception) -> RawRecord:
    """What stands for sample ``i`` and the rest of a shard that cannot be read on."""
    return RawRecord(
        f"{shard.name}/#{i}", error=(Skip.BROKEN_SHARD, f"{shard.name}: unreadable after {i} samples ({error})")
    )
