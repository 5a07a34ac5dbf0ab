"""Real data, the fast parts: bad-record taxonomy, image conversion, sources, and the stream order."""

import numpy as np
import pytest
from PIL import Image
from tiny_data import (
    BOMB_PIXELS,
    MISSING,
    build_items,
    encode,
    picture,
    single_thread,  # noqa: F401  (autouse fixture)
    write_coco,
    write_folder,
    write_wds,
)

from fluid.data.images import ImagePolicy, SmallImages, center_crop_resize, decode_record, load_image
from fluid.data.records import Decoded, Fix, RawRecord, RecordError, Rejected, Skip, clean_caption, flippable
from fluid.data.sources import CocoSource, FolderSource, WdsSource, open_source
from fluid.data.streaming import Plan
from fluid.data.tar import expand_shards

POLICY = ImagePolicy(resolution=32, max_pixels=BOMB_PIXELS)


def _outcome(item, policy=POLICY):
    caption = None if item.caption is MISSING else item.caption
    if item.image is None:
        return decode_record(RawRecord(item.name, caption, path="/nonexistent/" + item.name), policy)
    rec = RawRecord(item.name, caption, data=item.image)
    return decode_record(rec, policy)


@pytest.mark.parametrize("item", build_items(2), ids=lambda it: it.name)
def test_every_malformed_kind_is_skipped_or_fixed_as_expected(item):
    out = _outcome(item)
    if item.skip:
        assert isinstance(out, Rejected) and out.reason.value == item.skip, out
        assert out.detail
    else:
        assert isinstance(out, Decoded), out
        assert out.image.shape == (32, 32, 3) and out.image.dtype == np.uint8
        expected = [f for f in item.fixes if f != Fix.CAPTION_TRUNCATED.value]  # counted by prepare, not here
        assert [f.value for f in out.fixes] == expected


def test_small_images_are_skipped_when_asked():
    small = encode(picture(1, 16, 16))
    out = decode_record(RawRecord("s", "a small one", data=small), ImagePolicy(resolution=32, small=SmallImages.SKIP))
    assert isinstance(out, Rejected) and out.reason == Skip.TOO_SMALL
    img, fixes = load_image(small, ImagePolicy(resolution=32))
    assert img.shape == (32, 32, 3) and fixes == [Fix.UPSAMPLED]


def test_aspect_limit_is_configurable():
    wide = encode(picture(2, 200, 20))
    img, _ = load_image(wide, ImagePolicy(resolution=16, max_aspect=0))
    assert img.shape == (16, 16, 3)
    with pytest.raises(RecordError) as e:
        load_image(wide, ImagePolicy(resolution=16, max_aspect=3.0))
    assert e.value.reason == Skip.EXTREME_ASPECT


def test_center_crop_keeps_the_middle():
    # Left third red, middle third green, right third blue: the centred square is all green.
    a = np.zeros((30, 90, 3), np.uint8)
    a[:, :30, 0], a[:, 30:60, 1], a[:, 60:, 2] = 255, 255, 255
    out = center_crop_resize(Image.fromarray(a), 10)
    assert (out[..., 1] == 255).all() and out[..., 0].max() == 0 and out[..., 2].max() == 0


def test_sixteen_bit_is_scaled_and_alpha_is_composited_on_the_background():
    deep = np.full((32, 32), 200 * 257, np.uint16)  # 16-bit 200/255 grey
    img, fixes = load_image(encode(deep), POLICY)
    assert fixes == [Fix.HIGH_BIT_DEPTH] and (img == 200).all()
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 0] = 255  # red, fully transparent: only the background shows
    for bg in ((255, 255, 255), (0, 128, 0)):
        img, fixes = load_image(encode(rgba), ImagePolicy(resolution=32, background=bg))
        assert fixes == [Fix.ALPHA] and (img == np.array(bg, np.uint8)).all()


def test_the_pixel_limit_is_ours_not_pillows(monkeypatch):
    # Pillow's own limit lowered below the image: as if a 1.2 Mpx image were a 200 Mpx one.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 123_457)
    data = encode(Image.new("RGB", (1200, 1000)))
    with pytest.raises(RecordError) as e:
        load_image(data, ImagePolicy(resolution=32, max_pixels=1_000_000))
    assert e.value.reason == Skip.DECOMPRESSION_BOMB and "max_pixels=1000000" in e.value.detail
    assert "1200x1000" in e.value.detail and "123457" not in e.value.detail and "246914" not in e.value.detail
    image, _ = load_image(data, ImagePolicy(resolution=32, max_pixels=2_000_000))  # a limit raised on purpose
    assert image.shape == (32, 32, 3) and Image.MAX_IMAGE_PIXELS == 123_457  # Pillow's left as it was


def test_image_paths_stay_inside_the_images_folder(tmp_path):
    import json

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "images" / "ok.png").write_bytes(encode(picture(0, 40, 40)))
    (tmp_path / "secret.png").write_bytes(encode(picture(0, 40, 40)))
    names = [
        "images/ok.png",
        "../secret.png",
        "images/../../secret.png",
        str(tmp_path / "secret.png"),
        "images/./ok.png",
    ]
    (root / "metadata.jsonl").write_text("".join(json.dumps({"image": n, "caption": "a cat"}) + "\n" for n in names))
    records = FolderSource(root).records
    assert [r.error[0] if r.error else None for r in records] == [
        None,
        Skip.OUTSIDE_ROOT,
        Skip.OUTSIDE_ROOT,
        Skip.OUTSIDE_ROOT,
        None,
    ]
    assert "images_outside_root" in records[1].error[1]
    allowed = FolderSource(root, outside_root=True)
    assert all(r.error is None for r in allowed.records) and allowed.describe()["outside_root"] is True
    coco = {
        "images": [{"id": 1, "file_name": "../secret.png"}, {"id": 2, "file_name": "ok.png"}],
        "annotations": [{"id": 10, "image_id": 1, "caption": "a cat"}, {"id": 11, "image_id": 2, "caption": "a dog"}],
    }
    (root / "captions.json").write_text(json.dumps(coco))
    assert [r.error[0] if r.error else None for r in CocoSource(root / "captions.json", root / "images").records] == [
        Skip.OUTSIDE_ROOT,
        None,
    ]


def test_captions_are_cleaned_or_rejected():
    assert clean_caption(" a  red\ncircle\t") == "a red circle"
    assert clean_caption("café".encode()) == "café"
    for raw, reason in (
        (None, Skip.MISSING_CAPTION),
        ("  ", Skip.EMPTY_CAPTION),
        (b"caf\xe9", Skip.NON_UTF8_CAPTION),
        ("caf\udce9", Skip.NON_UTF8_CAPTION),
        (42, Skip.MISSING_CAPTION),
    ):
        with pytest.raises(RecordError) as e:
            clean_caption(raw)
        assert e.value.reason == reason, raw
    assert flippable("a red circle") and not flippable("a circle to the Left of a square")


def test_sources_parse_every_layout(tmp_path):
    items = build_items(3)
    folder = FolderSource(write_folder(tmp_path / "f", items), shard_size=4)
    assert sum(folder.sizes()) == len(items) + 1  # + the cut-off JSONL line
    assert [r.error[0] for r in folder.records if r.error] == [Skip.BAD_METADATA]
    assert folder.get(0, 0).path.endswith("good00.png") and len(folder.units()) == len(folder.sizes())

    coco = CocoSource(write_coco(tmp_path / "c", items), shard_size=5)  # images folder found next to annotations
    assert sum(coco.sizes()) == len(items) + 3 + 1  # second captions of the 3 good images + an unknown image
    ids = [r.image_id for r in coco.records if r.image_id]
    assert ids[0] == ids[1] == "good00.png"  # an image's captions are neighbours

    shards = write_wds(tmp_path / "w", items, per_shard=5)
    wds = WdsSource(f"{tmp_path}/w/shard-{{00000..{len(shards) - 1:05d}}}.tar")
    assert wds.units() == [p.name for p in shards] and wds.random_access  # local, uncompressed tars
    records = [r for u in range(len(shards)) for r in wds.read(u)]
    reasons = [r.error[0] for r in records if r.error]
    assert reasons == [Skip.BAD_METADATA, Skip.BROKEN_SHARD]  # the image-less sample, the truncated tar
    assert sum(wds.sizes()) == len(records)
    assert [r.key for r in wds.read(0, start=2)] == [r.key for r in wds.read(0)][2:]
    assert expand_shards(str(tmp_path / "w")) == expand_shards(str(tmp_path / "w" / "*.tar"))

    with pytest.raises(FileNotFoundError, match="do not exist"):
        expand_shards(str(tmp_path / "w" / "missing-{0..1}.tar"))
    with pytest.raises(FileNotFoundError, match="images folder"):
        CocoSource(tmp_path / "c" / "annotations" / "captions_train2014.json", images=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="needs a count"):
        open_source("shapes", None)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_plan_covers_every_record_once_per_epoch(world):
    sizes = [3, 0, 5, 7, 2, 9, 1]
    for epoch in range(3):
        seen = []
        for rank in range(world):
            plan = Plan(sizes, rank, world, window=4, seed=7)
            first = epoch * plan.length
            seen += [plan.locate(p)[3] for p in range(first, first + plan.length)]
            assert {plan.locate(p)[0] for p in range(first, first + plan.length)} == {epoch}
        assert sorted(seen) == list(range(sum(sizes)))
    a, b = Plan(sizes, 0, 1, 4, seed=7), Plan(sizes, 0, 1, 4, seed=7)
    order = [a.locate(p)[3] for p in range(60)]
    assert order == [b.locate(p)[3] for p in reversed(range(60))][::-1]  # a pure function of the position
    assert order[:25] != order[25:50]  # epochs differ
    assert order != [Plan(sizes, 0, 1, 4, seed=8).locate(p)[3] for p in range(60)]


def test_window_runs_agree_with_locate():
    plan = Plan([4, 6, 3, 8], rank=1, world=2, window=5, seed=3)
    for epoch in (0, 1):
        for w in range(-(-plan.length // plan.window)):
            for unit, first, stop, slots in plan.window_runs(epoch, w):
                for index, slot in zip(range(first, stop), slots):
                    assert plan.locate(slot)[:3] == (epoch, unit, index)


def _tar(path, members):
    """A tar of (name, bytes) members; bytes None: a directory."""
    import io
    import tarfile

    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_tar_samples_read_by_seeking_are_the_streamed_ones(tmp_path):
    """A local tar is read sample by sample through an index of its headers; every sample
    (odd names, repeated keys, members that belong to no sample, and tars cut anywhere) is
    the record that streaming the tar gives, and a ``pipe:`` stream of it gives the same."""
    import gzip
    import tarfile

    long = "d/" + "x" * 150  # a name longer than a tar header holds (an extended header before it)
    odd = _tar(
        tmp_path / "odd.tar",
        [
            ("d", None),
            (f"{long}.png", b"i1"),
            (f"{long}.txt", b"c1"),
            ("__meta__.json", b"{}"),
            ("README", b"no extension"),
            ("k\u00e9y.png", b"i2"),
            ("k\u00e9y.txt", b"c2"),
            ("a.png", b"i3"),
            ("b.png", b"i4"),
            ("a.txt", b"c3"),
        ],
    )
    shard = write_wds(tmp_path / "w", build_items(5), per_shard=4, broken=False)[0]
    full = shard.read_bytes()
    with tarfile.open(shard) as t:
        members = t.getmembers()
    cuts = {
        f"{where}{j}": full[:stop]
        for j, m in enumerate(members)
        for where, stop in (
            ("data", m.offset_data + m.size // 2),
            ("header", m.offset + 100),
            ("end", m.offset_data + m.size),
        )
    }
    for name, data in {"odd": odd.read_bytes(), "whole": full, **cuts, "empty": b""}.items():
        path = tmp_path / "cut" / f"{name}.tar"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        src, piped = WdsSource(str(path)), WdsSource(f"pipe:cat {path}")
        assert src.random_access and not piped.random_access
        n = src.sizes()[0]
        assert piped.sizes() == [n]
        streamed = list(src.read(0))
        assert [_fields(r) for r in piped.read(0)] == [_fields(r) for r in streamed]
        assert [_fields(src.get(0, i)) for i in range(n)] == [_fields(r) for r in streamed[:n]], name
        assert len(streamed) <= n + 1  # at most the break after the counted samples
    odd_src = WdsSource(str(odd))
    assert [r.key.split("/")[-1] for r in odd_src.read(0)] == ["x" * 150, "k\u00e9y", "a", "b", "a"]
    assert [odd_src.get(0, i).caption for i in range(4)] == [b"c1", b"c2", None, None]  # "a" again: a new sample
    assert odd_src.get(0, 4).error[0] == Skip.BAD_METADATA  # ... without an image
    packed = tmp_path / "packed.tar.gz"
    packed.write_bytes(gzip.compress(full))
    gz = WdsSource(str(packed))
    assert not gz.random_access
    assert [_fields(r)[1:] for r in gz.read(0)] == [_fields(r)[1:] for r in WdsSource(str(shard)).read(0)]
    with pytest.raises(NotImplementedError, match="sequentially"):
        gz.get(0, 0)


def _fields(r):
    return r.key, r.caption, r.data, r.error and r.error[0]
