"""Records on their way from a source to a batch, and the taxonomy of bad ones.

A :class:`Source` (the kinds are in :mod:`fluid.data.sources`) yields its records in fixed
units: :class:`RawRecord` (a key, the image as bytes / a path / an array, the raw
caption). Decoding turns each into :class:`Decoded` (a square uint8 image and a clean
caption, plus the :class:`Fix` es applied on the way) or :class:`Rejected` (a
:class:`Skip` reason and a human-readable detail). Nothing here raises on bad data: every
record ends up as one of the two, so a bad record never stops a run.

The tables in ``docs/data.md`` list every reason; keep them in step with the enums.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np


class Skip(str, enum.Enum):
    """Why a record was left out (counted per reason in a cache's manifest)."""

    BAD_METADATA = "bad_metadata"  # an index line / annotation that cannot be parsed, or has no image
    MISSING_FILE = "missing_file"  # the image file named by the index does not exist
    OUTSIDE_ROOT = "outside_root"  # an image path that leads out of the images folder (absolute, or via ..)
    EMPTY_FILE = "empty_file"  # zero bytes
    UNREADABLE = "unreadable"  # not an image Pillow can identify, or a decoder error
    TRUNCATED = "truncated"  # the image data ends early
    DECOMPRESSION_BOMB = "decompression_bomb"  # more pixels than the configured limit
    TOO_SMALL = "too_small"  # short side below the resolution, with data.small_images=skip
    EXTREME_ASPECT = "extreme_aspect"  # long side / short side above data.max_aspect
    MISSING_CAPTION = "missing_caption"  # no caption at all
    EMPTY_CAPTION = "empty_caption"  # a caption of whitespace only
    NON_UTF8_CAPTION = "non_utf8_caption"  # caption bytes that are not valid UTF-8
    BROKEN_SHARD = "broken_shard"  # a tar shard that cannot be read on (the records after the break)


class Fix(str, enum.Enum):
    """A problem that was repaired rather than skipped (counted too)."""

    CMYK = "cmyk_converted"  # CMYK -> RGB
    HIGH_BIT_DEPTH = "high_bit_depth_scaled"  # 16-bit / 32-bit samples scaled to 8 bits
    PALETTE = "palette_converted"  # palette (P) -> RGB
    ALPHA = "alpha_composited"  # transparency composited on the background colour
    MODE = "mode_converted"  # any other non-RGB mode (L, 1, LAB, YCbCr, ...) -> RGB
    UPSAMPLED = "upsampled"  # short side below the resolution, upsampled (bicubic)
    CAPTION_TRUNCATED = "caption_truncated"  # more text-encoder tokens than text.max_length


class RecordError(Exception):
    """Raised inside decoding; always caught and turned into a :class:`Rejected`."""

    def __init__(self, reason: Skip, detail: str = ""):
        super().__init__(f"{reason.value}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass
class RawRecord:
    """One pair as a source stores it. Exactly one of ``data``, ``path``, ``array`` is set,
    unless ``error`` already says why the record is bad (e.g. a malformed index line)."""

    key: str
    caption: object = None  # str, bytes, or None when the source had none
    data: bytes | None = None  # encoded image bytes (tar members)
    path: str | None = None  # an image file (folders, COCO)
    array: np.ndarray | None = None  # (R, R, 3) uint8 at the target resolution (shapes)
    error: tuple[Skip, str] | None = None
    image_id: str = ""  # records sharing an image (COCO captions) share this, to decode/encode it once


@dataclass
class Decoded:
    key: str
    image: np.ndarray  # (R, R, 3) uint8
    caption: str
    fixes: list[Fix] = field(default_factory=list)
    image_id: str = ""


@dataclass
class Rejected:
    key: str
    reason: Skip
    detail: str = ""


# ----------------------------------------------------------------------------- captions

_SIDES = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def clean_caption(raw: object) -> str:
    """A caption as the text encoder should see it, or :class:`RecordError`.

    Bytes must be UTF-8; strings must not hold lone surrogates (what undecodable bytes become
    under ``surrogateescape``). Runs of whitespace (newlines, tabs) become one space. Long
    captions pass through: the text encoder truncates them to ``text.max_length`` tokens and
    preparation counts them (:attr:`Fix.CAPTION_TRUNCATED`).
    """
    if raw is None:
        raise RecordError(Skip.MISSING_CAPTION, "no caption")
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise RecordError(
                Skip.NON_UTF8_CAPTION, f"caption bytes are not UTF-8 ({e.reason} at byte {e.start})"
            ) from None
    if not isinstance(raw, str):
        raise RecordError(Skip.MISSING_CAPTION, f"caption is a {type(raw).__name__}, not text")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        raise RecordError(Skip.NON_UTF8_CAPTION, "caption holds undecodable bytes") from None
    text = " ".join(raw.replace("\x00", " ").split())
    if not text:
        raise RecordError(Skip.EMPTY_CAPTION, "caption is empty or whitespace")
    return text


def flippable(caption: str) -> bool:
    """Whether mirroring the image keeps the caption true: not if it names a side."""
    return _SIDES.search(caption) is None


def stable_fraction(key: str, salt: str = "") -> float:
    """A number in [0, 1) fixed by ``key`` (never Python's salted ``hash``)."""
    digest = hashlib.blake2b(f"{salt}/{key}".encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


class SourceKind(str, enum.Enum):
    SHAPES = "shapes"
    FOLDER = "folder"
    COCO = "coco"
    WDS = "wds"


class Source:
    """Records grouped into units. Subclasses fill ``kind``, ``random_access`` and the methods."""

    kind: SourceKind
    random_access: bool = True
    """:meth:`get` works (else records come only in order, from :meth:`read`)."""
    sizes_known: bool = True
    """:meth:`sizes` costs nothing (WebDataset: a scan of every tar's headers)."""

    def units(self) -> list[str]:
        """Unit names, in their fixed order."""
        raise NotImplementedError

    def sizes(self) -> list[int]:
        """Records per unit (WebDataset: a scan of the tar headers, done once)."""
        raise NotImplementedError

    def read(self, unit: int, start: int = 0) -> Iterator[RawRecord]:
        """The records of one unit in order, from ``start`` on."""
        raise NotImplementedError

    def get(self, unit: int, index: int) -> RawRecord:
        """One record (random-access sources only)."""
        raise NotImplementedError(f"{self.kind.value} sources are read sequentially")

    def describe(self) -> dict:
        """What identifies this source's content (compared when a preparation resumes)."""
        raise NotImplementedError


class IndexedSource(Source):
    """A list of records known up front, split into units of ``shard_size``."""

    def __init__(self, records: list[RawRecord], shard_size: int):
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, not {shard_size}")
        self.records, self.shard_size = records, shard_size

    def units(self) -> list[str]:
        n = len(self.records)
        return [f"{s}-{min(n, s + self.shard_size)}" for s in range(0, n, self.shard_size)]

    def sizes(self) -> list[int]:
        n = len(self.records)
        return [min(n, s + self.shard_size) - s for s in range(0, n, self.shard_size)]

    def read(self, unit: int, start: int = 0) -> Iterator[RawRecord]:
        first = unit * self.shard_size
        yield from self.records[first + start : min(len(self.records), first + self.shard_size)]

    def get(self, unit: int, index: int) -> RawRecord:
        return self.records[unit * self.shard_size + index]
