"""Evaluation: Frechet distance math, Inception loading, ShapesEval, shapes_fd, the learned
kind reader, validation loss, the COCO protocol, GenEval export and ``fluid eval``."""

import contextlib
import json
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import scipy.linalg
import torch
from helpers import make_tokenizer, random_inception_file, tiny_config
from PIL import Image
from tiny_data import fake_coco

from fluid.eval.frechet import FeatureStats, InceptionFeatures, cache_key, cached_reference, frechet_distance


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on a small shared CPU, two threads that wait on each other can make
    sampling many times slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- Frechet distance


def _random_stats(rng: np.random.Generator, d: int, n: int = 200) -> FeatureStats:
    a = rng.normal(size=(d, d))
    return FeatureStats.from_features(rng.normal(size=(n, d)) @ a + rng.normal(size=d))


def test_frechet_distance_matches_sqrtm_formula():
    rng = np.random.default_rng(0)
    for d in (1, 3, 8):
        a, b = _random_stats(rng, d), _random_stats(rng, d)
        covmean = scipy.linalg.sqrtm(a.sigma @ b.sigma).real
        expected = np.sum((a.mu - b.mu) ** 2) + np.trace(a.sigma + b.sigma - 2 * covmean)
        assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6, abs=1e-8)
        assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)
        assert abs(frechet_distance(a, a)) < 1e-8


def test_frechet_distance_diagonal_closed_form():
    """N(m1, diag(v1)) vs N(m2, diag(v2)): |m1 - m2|^2 + sum (sqrt v1 - sqrt v2)^2."""
    m1, m2 = np.array([0.0, 1.0, -2.0]), np.array([0.5, 1.0, 1.0])
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    a, b = FeatureStats(m1, np.diag(v1), 10), FeatureStats(m2, np.diag(v2), 10)
    expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="dimensions"):
        frechet_distance(a, FeatureStats(np.zeros(2), np.eye(2), 10))
    with pytest.raises(ValueError):
        FeatureStats.from_features(np.zeros((1, 3)))


def test_reference_statistics_are_cached(tmp_path):
    rng = np.random.default_rng(1)
    calls = []

    def compute():
        calls.append(1)
        return _random_stats(rng, 4)

    key = cache_key(metric="test", data="x", n=200, features="f:1")
    s1, path, hit1 = cached_reference(key, compute, tmp_path)
    s2, _, hit2 = cached_reference(key, compute, tmp_path)
    assert (hit1, hit2, len(calls)) == (False, True, 1) and path.suffix == ".npz"
    assert np.array_equal(s1.mu, s2.mu) and np.array_equal(s1.sigma, s2.sigma) and s1.n == s2.n
    cached_reference(cache_key(metric="test", data="x", n=200, features="f:2"), compute, tmp_path)
    assert len(calls) == 2  # another feature extractor: another entry
    # A file that does not say it was made for this key, or cannot be read, is recomputed.
    FeatureStats.save(s1, path, {"key": "something else"})
    assert cached_reference(key, compute, tmp_path)[2] is False and len(calls) == 3
    path.write_bytes(path.read_bytes()[:100])
    assert cached_reference(key, compute, tmp_path)[2] is False and len(calls) == 4
    assert cached_reference(key, compute, tmp_path)[2] is True and len(calls) == 4


def test_reference_keys_follow_the_data(tmp_path):
    from fluid.eval.run import files_digest, shapes_fingerprint
    from fluid.shapes.dataset import ShapesDataset

    assert shapes_fingerprint(ShapesDataset("test", 32)) == shapes_fingerprint(ShapesDataset("test", 32))
    assert shapes_fingerprint(ShapesDataset("test", 32)) != shapes_fingerprint(ShapesDataset("test", 64))
    image = tmp_path / "000.jpg"
    image.write_bytes(b"x" * 10)
    before = files_digest([image])
    image.write_bytes(b"x" * 11)  # a resized copy under the same name
    assert files_digest([image]) != before


# ----------------------------------------------------------------------------- Inception (FID)


@contextlib.contextmanager
def no_downloads():
    """Every way a weights download could start fails: torch.hub's loader, the references
    torch-fidelity took to it at import, and any socket connection at all."""
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    refuse = AssertionError("no downloads")
    with (
        mock.patch("torch.hub.load_state_dict_from_url", side_effect=refuse),
        mock.patch.object(tf_inception, "load_state_dict_from_url", side_effect=refuse),
        mock.patch("socket.socket.connect", side_effect=refuse),
        mock.patch("socket.create_connection", side_effect=refuse),
    ):
        yield


def test_the_no_download_guard_guards_torch_fidelity_and_sockets():
    import socket

    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    with no_downloads():
        with pytest.raises(AssertionError, match="no downloads"):
            tf_inception.load_state_dict_from_url(tf_inception.URL_INCEPTION_V3)
        with pytest.raises(AssertionError, match="no downloads"):
            torch.hub.load_state_dict_from_url("https://example.invalid/weights.pth")
        with pytest.raises(AssertionError, match="no downloads"):
            socket.create_connection(("example.invalid", 443), timeout=1)


@pytest.mark.slow
def test_inception_features_load_from_a_local_file(tmp_path):
    path = tmp_path / "inception.pth"
    state = random_inception_file(path)
    with no_downloads():
        ext = InceptionFeatures(path)
    loaded = ext.model.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    feats = ext(torch.rand(1, 3, 32, 32) * 2 - 1)
    assert feats.shape == (1, 2048) and torch.isfinite(feats).all() and feats.abs().sum() > 0
    assert ext.identity().startswith("inception-v3-compat:")
    # the whole COCO FID path on a fake 2-pair COCO (grey generated images: FID > 0)
    from fluid.eval.run import EvalOptions, coco_fid

    captions, images = fake_coco(tmp_path)
    opts = EvalOptions(
        inception_weights=str(path),
        coco_captions=str(captions),
        coco_images=str(images),
        coco_size=2,
        cache_dir=str(tmp_path / "cache"),
    )
    fid = coco_fid(lambda prompts, seed: torch.zeros(len(prompts), 3, 16, 16), 16, opts, "cpu", progress=False)
    assert fid["pairs"] == 2 and np.isfinite(fid["value"]) and fid["value"] > 0 and not fid["reference"]["cached"]
    assert Path(fid["reference"]["file"]).is_file()
    with pytest.raises(FileNotFoundError, match="Inception weights"):
        InceptionFeatures(tmp_path / "missing.pth")
    torch.save({"something": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="InceptionV3"):
        InceptionFeatures(tmp_path / "other.pth")
    torch.save({"fc.weight": mock.sentinel}, tmp_path / "code.pth")  # unpickling would need code
    with pytest.raises(ValueError, match="weights_only"):
        InceptionFeatures(tmp_path / "code.pth")


# ----------------------------------------------------------------------------- ShapesEval and the detector


def test_shapes_eval_scores_renders_near_one_and_noise_near_zero():
    from fluid.shapes.eval.evaluation import ShapesEval

    ev = ShapesEval(prompts_per_family=6, seeds=2)
    assert len(ev) == 6 * 6 * 2 and len({(it.prompt, it.seed, it.row) for it in ev.items}) == len(ev)
    assert ev.prompts == ShapesEval(prompts_per_family=6, seeds=2).prompts  # fixed prompt draw
    real = ev.real_images()
    result = ev.score(real)
    assert result.overall >= 0.97 and min(result.per_family.values()) >= 0.9, result.per_family
    g = torch.Generator().manual_seed(0)
    noise = ev.score(torch.rand(real.shape, generator=g) * 2 - 1)
    assert noise.overall <= 0.05, noise.per_family
    blank = ev.score(torch.full_like(real, -0.8))
    assert blank.overall == 0.0
    # generate() calls the source once per (family, seed), prompts in order
    calls = []
    images = ev.generate(
        lambda prompts, seed: calls.append((tuple(prompts), seed)) or torch.zeros(len(prompts), 3, 64, 64),
        progress=False,
    )
    assert images.shape[0] == len(ev) and len(calls) == 6 * 2
    assert [p for c in calls for p in c[0]] == [it.prompt for it in ev.items]


def test_learned_detector_reads_round_trips_and_rejects_blobs():
    from fluid.shapes.eval.evaluation import detector_accuracy

    acc = detector_accuracy({"kl": make_shipped("continuous")}, per_family=30, progress=False)
    assert acc["render"]["min"] >= 0.97, acc["render"]
    # the KL decoder rounds off small objects: counting scenes are the hard case (the
    # template reader reads only ~57% of them, and 87% of colour-attribution scenes)
    assert (
        acc["kl"]["counting"] >= 0.8 and min(v for k, v in acc["kl"].items() if k not in ("counting", "min")) >= 0.95
    ), acc["kl"]
    assert acc["blobs_named"] <= 0.15


def make_shipped(token_type: str):
    from fluid.assets import tokenizer_path
    from fluid.tokenizers.load import load_tokenizer

    return load_tokenizer(tokenizer_path(token_type)).eval()


def test_shapes_fd_separates_real_from_noise():
    from fluid.shapes.dataset import ShapesDataset
    from fluid.shapes.eval.features import load_shapes_features

    feats = load_shapes_features()
    ds = ShapesDataset("test")
    ref = FeatureStats.from_features(feats(ds.batch(range(400))[0]))
    real = FeatureStats.from_features(feats(ds.batch(range(400, 600))[0]))
    noise = FeatureStats.from_features(
        feats(torch.rand(200, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    )
    recolored = FeatureStats.from_features(feats(ds.batch(range(400, 600))[0][:, [2, 0, 1]]))  # RGB -> BRG: off-palette
    assert frechet_distance(real, ref) < 0.25 * frechet_distance(recolored, ref) < frechet_distance(noise, ref)
    assert feats(torch.zeros(2, 3, 32, 32)).shape == (2, 64)


# ----------------------------------------------------------------------------- validation loss


def test_validation_loss_is_identical_across_calls(minilm):
    from fluid.model import Generator
    from fluid.train.validation import ValidationSet, loss_name, validation_loss

    for variant, kind in (("continuous-random", "kl"), ("discrete-raster", "vq")):
        cfg = tiny_config(variant)
        torch.manual_seed(0)
        model = Generator(cfg.model, cfg.text)
        tok = make_tokenizer(kind)
        a = ValidationSet.build(cfg, tok, minilm, batch_size=8, size=20)
        b = ValidationSet.build(cfg, tok, minilm, batch_size=8, size=20)
        assert len(a) == 20 and torch.equal(a.tokens, b.tokens)
        first, second = validation_loss(model, a), validation_loss(model, b)
        assert first == second and np.isfinite(first)
        model.train()
        assert validation_loss(model, a) == first and model.training  # mode restored, no dropout used
    assert "cross-entropy" in loss_name("discrete") and "diffusion" in loss_name("continuous")


# ----------------------------------------------------------------------------- COCO and GenEval


def test_coco_protocol_sample_is_fixed_and_well_formed(tmp_path):
    from fluid.eval.coco import image_batches, load_image, pairs_digest, sample_coco_pairs

    captions, images = fake_coco(tmp_path)
    a, b = sample_coco_pairs(captions, images, 4, seed=0), sample_coco_pairs(captions, images, 4, seed=0)
    assert a == b and pairs_digest(a) == pairs_digest(b)
    assert len({p.image_id for p in a}) == 4 and all(p.caption.startswith(f"photo {p.image_id - 100} ") for p in a)
    assert pairs_digest(sample_coco_pairs(captions, images, 4, seed=1)) != pairs_digest(a)
    x = load_image(a[0].image, 16)
    assert x.shape == (3, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert [t.shape for t in image_batches(a, 8, batch_size=3)] == [(3, 3, 8, 8), (1, 3, 8, 8)]
    with pytest.raises(ValueError, match="only 6"):
        sample_coco_pairs(captions, images, 7)
    with pytest.raises(FileNotFoundError):
        sample_coco_pairs(tmp_path / "nope.json", images, 1)
    (tmp_path / "bad.json").write_text('{"images": []}')
    with pytest.raises(ValueError, match="COCO captions"):
        sample_coco_pairs(tmp_path / "bad.json", images, 1)


def test_geneval_export_layout(tmp_path):
    from fluid.eval.geneval import export_geneval, read_geneval_metadata

    lines = [
        {"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a photo of a cat"},
        {
            "tag": "two_object",
            "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1}],
            "prompt": "a photo of a cat and a dog",
        },
    ]
    meta = tmp_path / "evaluation_metadata.jsonl"
    meta.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    calls = []

    def source(prompts, seed):
        calls.append((prompts, seed))
        return torch.rand(len(prompts), 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1

    out = tmp_path / "geneval"
    summary = export_geneval(source, meta, out, n_samples=3, seed=10, progress=False, maker={"model": "m"})
    assert summary["written"] == 2 and calls == [
        (["a photo of a cat"] * 3, 10),
        (["a photo of a cat and a dog"] * 3, 11),
    ]
    for i, rec in enumerate(lines):
        folder = out / f"{i:05d}"
        assert [json.loads(x) for x in (folder / "metadata.jsonl").read_text().splitlines()] == [rec]
        assert sorted(p.name for p in (folder / "samples").iterdir()) == ["0000.png", "0001.png", "0002.png"]
        assert Image.open(folder / "samples" / "0000.png").size == (16, 16) and (folder / "grid.png").is_file()
    (out / "00001" / "metadata.jsonl").unlink()  # an interrupted folder is redone, a complete one skipped
    assert export_geneval(source, meta, out, n_samples=3, seed=10, progress=False, maker={"model": "m"})["written"] == 1
    assert len(calls) == 3
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"tag": "x"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        read_geneval_metadata(bad)


def test_geneval_rerun_never_keeps_stale_results(tmp_path):
    from fluid.eval.geneval import GenEvalExportError, export_geneval

    def source(prompts, seed):
        return torch.rand(len(prompts), 3, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1

    def meta(name, prompts):
        path = tmp_path / name
        path.write_text("".join(json.dumps({"tag": "single_object", "prompt": p}) + "\n" for p in prompts))
        return path

    def folders(out):
        return {
            p.name: (
                [json.loads(p.joinpath("metadata.jsonl").read_text())["prompt"]],
                sorted(x.name for x in (p / "samples").iterdir()),
            )
            for p in sorted(out.iterdir())
            if p.is_dir()
        }

    out, a = tmp_path / "out", {"model": "a", "sample": {"cfg": 3.0}}
    export_geneval(source, meta("one.jsonl", ["a cat", "a dog", "a cow"]), out, 4, progress=False, maker=a)
    # Another model (or other sampling settings) into the same folder: refused, or replaced on request.
    for other in ({"model": "b", "sample": {"cfg": 3.0}}, {"model": "a", "sample": {"cfg": 1.0}}):
        with pytest.raises(GenEvalExportError, match="holds an export made by"):
            export_geneval(source, meta("one.jsonl", ["a cat", "a dog", "a cow"]), out, 4, progress=False, maker=other)
    with pytest.raises(GenEvalExportError, match="seed 0"):
        export_geneval(source, tmp_path / "one.jsonl", out, 4, seed=5, progress=False, maker=a)
    # Other prompts: changed folders are redone, folders past the new list removed.
    summary = export_geneval(source, meta("two.jsonl", ["a cat", "a horse"]), out, 4, progress=False, maker=a)
    assert (summary["kept"], summary["written"], summary["removed"]) == (1, 1, 1)
    assert folders(out) == {
        "00000": (["a cat"], [f"{k:04d}.png" for k in range(4)]),
        "00001": (["a horse"], [f"{k:04d}.png" for k in range(4)]),
    }
    # Fewer samples per prompt: no extra image is left for GenEval to score.
    export_geneval(source, tmp_path / "two.jsonl", out, 2, progress=False, maker=a)
    assert all(samples == ["0000.png", "0001.png"] for _, samples in folders(out).values())
    summary = export_geneval(
        source, tmp_path / "two.jsonl", out, 2, progress=False, maker={"model": "b"}, overwrite=True
    )
    assert summary["written"] == 2 and json.loads((out / "fluid_export.json").read_text())["maker"] == {"model": "b"}
    # A folder of numbered prompt folders that does not say what made them is not taken over either.
    (tmp_path / "foreign" / "00000").mkdir(parents=True)
    with pytest.raises(GenEvalExportError, match="does not say what made it"):
        export_geneval(source, tmp_path / "two.jsonl", tmp_path / "foreign", 2, progress=False, maker=a)


def test_fluid_eval_geneval_refuses_another_models_export(tmp_path, capsys):
    from fluid.cli import main

    meta = tmp_path / "meta.jsonl"
    meta.write_text('{"tag": "single_object", "prompt": "a photo of a circle"}\n')
    common = [
        "--metrics",
        "geneval",
        "--geneval-metadata",
        str(meta),
        "--geneval-samples",
        "1",
        "--geneval-out",
        str(tmp_path / "g"),
        "--device",
        "cpu",
        "--threads",
        "1",
        "--no-progress",
    ]
    assert main(["eval", "--variant", "discrete-raster", "--out", str(tmp_path / "a"), *common]) == 0
    assert main(["eval", "--variant", "discrete-random", "--out", str(tmp_path / "b"), *common]) == 2
    assert "discrete-raster" in capsys.readouterr().err and not (tmp_path / "b" / "metrics.json").exists()
    assert (
        main(["eval", "--variant", "discrete-random", "--out", str(tmp_path / "b"), *common, "--geneval-overwrite"])
        == 0
    )
    rec = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert rec["metrics"]["geneval"]["written"] == 1
    assert (
        json.loads((tmp_path / "g" / "fluid_export.json").read_text())["maker"]["model"]["variant"] == "discrete-random"
    )


# ----------------------------------------------------------------------------- fluid eval


@pytest.mark.slow
def test_fluid_eval_end_to_end(tmp_path):
    from fluid.cli import main

    out = tmp_path / "eval"
    rc = main(
        [
            "eval",
            "--variant",
            "discrete-random",
            "--out",
            str(out),
            "--prompts-per-family",
            "2",
            "--seeds",
            "1",
            "--val-size",
            "16",
            "--detector-per-family",
            "4",
            "--fd-reference",
            "256",
            "--cache-dir",
            str(tmp_path / "c"),
            "--device",
            "cpu",
            "--threads",
            "1",
            "--no-progress",
        ]
    )
    assert rc == 0
    rec = json.loads((out / "metrics.json").read_text())
    m = rec["metrics"]
    assert set(m) == {"shapes_eval", "shapes_fd", "val_loss", "detector"}
    assert m["shapes_eval"]["images"] == 12 and 0 <= m["shapes_eval"]["overall"] <= 1
    assert set(m["shapes_eval"]["per_family"]) == {
        "single_object",
        "two_object",
        "counting",
        "colors",
        "position",
        "color_attr",
    }
    assert m["shapes_fd"]["value"] > 0 and m["val_loss"]["pairs"] == 16 and np.isfinite(m["val_loss"]["value"])
    assert rec["checkpoint"]["variant"] == "discrete-random" and len(rec["checkpoint"]["weights_sha256"]) == 12
    assert rec["config"]["model"]["token_type"] == "discrete"
    report = (out / "report.md").read_text()
    assert (
        "ShapesEval" in report
        and "shapes_eval/counting.png" in report
        and (out / "shapes_eval" / "counting.png").is_file()
    )
    assert list((tmp_path / "c").glob("*.npz"))  # the shapes_fd reference was cached
    assert main(["eval", "--variant", "discrete-random", "--out", str(out), "--metrics", "fid"]) == 2  # inputs missing


def test_fluid_eval_variant_all_evaluates_each_shipped_model_into_its_own_folder(tmp_path, capsys):
    from fluid.assets import generator_path
    from fluid.checkpoint import read_meta
    from fluid.cli import main
    from fluid.config import VARIANTS

    out = tmp_path / "eval"
    assert (
        main(
            [
                "eval",
                "--variant",
                "all",
                "--out",
                str(out),
                "--metrics",
                "val_loss",
                "--val-size",
                "4",
                "--device",
                "cpu",
                "--threads",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary) == 4 and (out / "summary.md").is_file()
    losses = {}
    for variant in VARIANTS:
        rec = json.loads((out / variant / "metrics.json").read_text())
        assert rec["checkpoint"]["variant"] == variant and rec["metrics"]["val_loss"]["pairs"] == 4
        assert rec["config"]["model"]["token_type"] == variant.split("-")[0]
        losses[variant] = rec["metrics"]["val_loss"]["value"]
        # Each folder scored the shipped weights of its own variant.
        assert rec["checkpoint"]["step"] == read_meta(generator_path(variant))["step"]
    assert len(set(losses.values())) == 4
    assert [row["val_loss"] for row in summary.values()] == pytest.approx(list(losses.values()), abs=1e-4)
