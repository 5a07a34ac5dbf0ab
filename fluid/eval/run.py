"""``run_eval``: every requested metric of one checkpoint (or shipped variant) into one
``metrics.json`` and a ``report.md`` (the command, ``fluid eval``, is :mod:`fluid.commands.eval`).

Metrics (``Metric``):

- ``shapes_eval``: GenEval-style scores on the built-in prompts (:mod:`fluid.shapes.eval.evaluation`).
- ``shapes_fd``: Frechet distance in our shapes feature space (:mod:`fluid.shapes.eval.features`; not FID),
  on the ShapesEval images against cached statistics of real test-split renders, with the
  same distance for real renders of the same prompts as the floor.
- ``val_loss``: the training loss on the fixed validation set (:mod:`fluid.train.validation`).
- ``detector``: the detector's accuracy on real scenes and after this model's tokenizer's
  round trip, i.e. whether ``shapes_eval`` can be trusted for this tokenizer.
- ``fid``: zero-shot FID on the MS-COCO 2014 protocol (``coco.py``; needs the Inception
  weights file and COCO captions + images).
- ``geneval``: GenEval's folder layout for its official evaluator (``geneval.py``).
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from fluid.config import VARIANTS, SampleConfig

FORMAT = "fluid-eval/1"


class Metric(str, enum.Enum):
    SHAPES_EVAL = "shapes_eval"
    SHAPES_FD = "shapes_fd"
    VAL_LOSS = "val_loss"
    DETECTOR = "detector"
    FID = "fid"
    GENEVAL = "geneval"


DEFAULT_METRICS = (Metric.SHAPES_EVAL, Metric.SHAPES_FD, Metric.VAL_LOSS, Metric.DETECTOR)


@dataclasses.dataclass
class EvalOptions:
    """Everything ``run_eval`` can be told; defaults are sized for a laptop CPU."""

    prompts_per_family: int = 8
    seeds: int = 4
    strict: bool = False  # ShapesEval: also fail images with extra objects (not GenEval's rule)
    val_size: int = 512
    detector_per_family: int = 100
    fd_reference: int = 5000  # real test-split renders behind the cached shapes_fd reference
    inception_weights: str | None = None
    coco_captions: str | None = None
    coco_images: str | None = None
    coco_size: int = 30_000
    coco_seed: int = 0
    geneval_metadata: str | None = None
    geneval_samples: int = 4
    geneval_out: str | None = None  # default: <out_dir>/geneval
    geneval_overwrite: bool = False  # replace an export made by another model or with other settings
    cache_dir: str | None = None  # reference statistics (default: fluid.eval.frechet.cache_dir())
    device: str | None = None
    # sampling overrides, named as the SampleConfig fields they override (None: the checkpoint's)
    cfg: float | None = None
    cfg_schedule: str | None = None
    temperature: float | None = None
    steps: int | None = None
    head_steps: int | None = None
    head_sampler: str | None = None
    batch_size: int | None = None
    guidance_refresh: int | None = None

    def sample_overrides(self) -> dict:
        """The sampling values given: each field named as a :class:`~fluid.config.SampleConfig`
        field, where not None."""
        names = {f.name for f in dataclasses.fields(SampleConfig)}
        given = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name in names}
        return {k: v for k, v in given.items() if v is not None}


def _resolve(checkpoint_or_variant: str | Path | None) -> tuple[Path | None, str | None]:
    """(checkpoint path, shipped variant): a variant name picks the shipped model."""
    s = str(checkpoint_or_variant) if checkpoint_or_variant is not None else "continuous-random"
    if s in VARIANTS and not Path(s).exists():
        return None, s
    return Path(s), None


def checkpoint_identity(pipe, path: Path | None, variant: str | None) -> dict:
    from fluid import checkpoint as ckpt
    from fluid.assets import generator_path
    from fluid.files import file_digest

    folder = ckpt.resolve(path if path is not None else generator_path(variant))
    meta = ckpt.read_meta(folder)
    return {
        "name": f"shipped:{variant}" if variant else folder.name,
        "path": str(folder),
        "shipped": variant is not None,
        "variant": pipe.cfg.model.variant,
        "step": meta.get("step"),
        "weights_sha256": file_digest(folder / "ema.safetensors", 12),
        "tokenizer": pipe.tokenizer.identity(),
        "text_encoder": pipe.text_encoder.identity(),
        "params": sum(p.numel() for p in pipe.model.parameters()),
    }


def _load_pipe(path: Path | None, variant: str | None, device: str):
    from fluid import checkpoint as ckpt
    from fluid.assets import generator_path
    from fluid.sample.pipeline import FluidPipeline
    from fluid.text.cache import CachedTextEncoder
    from fluid.text.encoders import build_text_encoder

    cfg = ckpt.read_config(path if path is not None else generator_path(variant))
    text = CachedTextEncoder(build_text_encoder(cfg.text, device=device))
    return FluidPipeline.from_pretrained(path, variant=variant or "continuous-random", device=device, text_encoder=text)


def run_eval(
    checkpoint_or_variant: str | Path | None,
    out_dir: str | Path,
    metrics: Sequence[Metric | str] = DEFAULT_METRICS,
    progress: bool = True,
    **options,
) -> dict:
    """Evaluate one checkpoint folder, run folder or shipped variant name; write
    ``metrics.json`` and ``report.md`` into ``out_dir``; return the metrics record.
    ``options`` are the fields of ``EvalOptions``."""
    from fluid.eval.report import write_report
    from fluid.shapes.eval.evaluation import ShapesEval, pipeline_source

    opts = EvalOptions(**options)
    try:
        wanted = list(dict.fromkeys(Metric(m) for m in metrics))
    except ValueError:
        raise ValueError(
            f"unknown metric in {list(metrics)}; choose from {', '.join(m.value for m in Metric)}"
        ) from None
    _check_inputs(wanted, opts)
    t0 = time.perf_counter()
    device = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
    path, variant = _resolve(checkpoint_or_variant)
    pipe = _load_pipe(path, variant, device)
    cfg = pipe.cfg
    used = pipe.settings(**opts.sample_overrides())  # checked before any sampling; the values used
    source = pipeline_source(pipe, **opts.sample_overrides())
    identity = checkpoint_identity(pipe, path, variant)
    # What makes the images: a GenEval export rerun into the same folder keeps only what this
    # model made with these settings (the checkpoint folder's path or name is not part of it).
    maker = {
        "model": {k: identity[k] for k in ("variant", "weights_sha256", "tokenizer", "text_encoder")},
        "sample": used,
    }
    geneval_out = Path(opts.geneval_out) if opts.geneval_out else Path(out_dir) / "geneval"
    if Metric.GENEVAL in wanted:
        from fluid.eval.geneval import check_export

        check_export(geneval_out, maker, overwrite=opts.geneval_overwrite)  # refuse before hours of sampling
    record = {
        "format": FORMAT,
        "checkpoint": identity,
        "config": cfg.to_dict(),
        "eval": {"metrics": [m.value for m in wanted], **dataclasses.asdict(opts), "device": device, "sample": used},
        "metrics": {},
        "seconds_per_metric": {},
    }
    m, timing = record["metrics"], record["seconds_per_metric"]
    shapes, images = None, None

    if Metric.SHAPES_EVAL in wanted or Metric.SHAPES_FD in wanted:
        if cfg.data.source != "shapes":
            raise ValueError(
                f"shapes_eval and shapes_fd need a model of the built-in shapes data, not {cfg.data.source!r}"
            )
        t = time.perf_counter()
        ev = ShapesEval(opts.prompts_per_family, opts.seeds, resolution=cfg.data.resolution, strict=opts.strict)
        images = ev.generate(source, progress)
        record["eval"]["shapes_eval"] = ev.config()
        timing["sampling"] = round(time.perf_counter() - t, 1)
        real = ev.real_images()
        if Metric.SHAPES_EVAL in wanted:
            from fluid.shapes.eval.classifier_data import round_trip

            t = time.perf_counter()
            shapes = ev.score(images, progress)
            m["shapes_eval"] = shapes.to_dict()
            # Cross-checks: the classical template reader on the same images, and what a
            # perfect generator would score here: real renders of the same prompts passed
            # through this model's tokenizer (the decoder bounds what the model can draw).
            m["shapes_eval"]["template_reader"] = ev.score(images, classifier=None).to_dict()
            m["shapes_eval"]["tokenizer_ceiling"] = ev.score(round_trip(real, pipe.tokenizer)).to_dict()
            timing["shapes_eval"] = round(time.perf_counter() - t, 1)
        if Metric.SHAPES_FD in wanted:
            t = time.perf_counter()
            m["shapes_fd"] = shapes_fd(images, real, cfg.data.resolution, opts)
            timing["shapes_fd"] = round(time.perf_counter() - t, 1)
    if Metric.VAL_LOSS in wanted:
        from fluid.train.validation import ValidationSet, loss_name, validation_loss

        t = time.perf_counter()
        valset = ValidationSet.build(cfg, pipe.tokenizer, pipe.text_encoder, device=device, size=opts.val_size)
        m["val_loss"] = {
            "value": validation_loss(pipe.model, valset, cfg.train.precision),
            "pairs": len(valset),
            "loss": loss_name(cfg.model.token_type),
            "split": "val",
            "weights": "ema",
        }
        if pipe.model.continuous:  # the epsilon MSE alone: comparable across VLB weights
            m["val_loss"]["mse"] = validation_loss(pipe.model, valset, cfg.train.precision, vlb_weight=0.0)
            m["val_loss"]["vlb_weight"] = cfg.model.vlb_weight
        timing["val_loss"] = round(time.perf_counter() - t, 1)
    if Metric.DETECTOR in wanted:
        from fluid.shapes.eval.evaluation import detector_accuracy

        t = time.perf_counter()
        m["detector"] = detector_accuracy(
            {"round_trip": pipe.tokenizer}, opts.detector_per_family, resolution=cfg.data.resolution, progress=progress
        )
        m["detector"]["round_trip_tokenizer"] = pipe.tokenizer.identity()
        timing["detector"] = round(time.perf_counter() - t, 1)
    if Metric.FID in wanted:
        t = time.perf_counter()
        m["fid"] = coco_fid(source, cfg.data.resolution, opts, device, progress)
        timing["fid"] = round(time.perf_counter() - t, 1)
    if Metric.GENEVAL in wanted:
        from fluid.eval.geneval import export_geneval

        t = time.perf_counter()
        m["geneval"] = export_geneval(
            source,
            opts.geneval_metadata,
            geneval_out,
            opts.geneval_samples,
            progress=progress,
            maker=maker,
            overwrite=opts.geneval_overwrite,
        )
        timing["geneval"] = round(time.perf_counter() - t, 1)

    record["seconds"] = round(time.perf_counter() - t0, 1)
    record["time"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    record["files"] = write_report(out_dir, record, shapes, images)
    return record


def _check_inputs(wanted: list[Metric], opts: EvalOptions) -> None:
    """Fail before any sampling when a requested metric lacks its inputs."""
    if Metric.FID in wanted:
        missing = [n for n in ("inception_weights", "coco_captions", "coco_images") if getattr(opts, n) is None]
        if missing:
            raise ValueError(f"fid needs {', '.join('--' + n.replace('_', '-') for n in missing)}")
        for n in ("inception_weights", "coco_captions"):
            if not Path(getattr(opts, n)).is_file():
                raise FileNotFoundError(f"{n.replace('_', ' ')} file {getattr(opts, n)} does not exist")
    if Metric.GENEVAL in wanted:
        if opts.geneval_metadata is None:
            raise ValueError("geneval needs --geneval-metadata (GenEval's evaluation_metadata.jsonl)")
        from fluid.eval.geneval import read_geneval_metadata

        read_geneval_metadata(opts.geneval_metadata)


def shapes_fd(images: torch.Tensor, real: torch.Tensor, resolution: int, opts: EvalOptions) -> dict:
    """shapes_fd of ``images`` and of ``real`` renders of the same prompts (the floor), both
    against cached statistics of ``fd_reference`` test-split renders."""
    from fluid.eval.frechet import FeatureStats, cache_key, cached_reference, frechet_distance
    from fluid.shapes.dataset import ShapesDataset
    from fluid.shapes.eval.features import load_shapes_features

    feats = load_shapes_features()
    ds = ShapesDataset("test", resolution)
    n = min(opts.fd_reference, len(ds))

    def compute() -> FeatureStats:
        return FeatureStats.from_features(
            torch.cat([feats(ds.batch(range(s, min(n, s + 500)))[0]) for s in range(0, n, 500)])
        )

    # The renders themselves are part of the key: a change to the shapes renderer makes new statistics.
    key = cache_key(
        metric="shapes_fd", data=f"shapes-test:{shapes_fingerprint(ds)}", res=resolution, n=n, features=feats.identity()
    )
    ref, file, hit = cached_reference(key, compute, opts.cache_dir)
    return {
        "value": frechet_distance(FeatureStats.from_features(feats(images)), ref),
        "real": frechet_distance(FeatureStats.from_features(feats(real)), ref),
        "images": len(images),
        "reference": {"split": "test", "images": n, "file": str(file), "cached": hit},
        "features": feats.identity(),
        "note": "Frechet distance in our shapes feature space; not FID",
    }


def shapes_fingerprint(ds, count: int = 8) -> str:
    """A short hash of the first renders and captions of a shapes split."""
    import hashlib

    images, captions = ds.batch(range(count))
    h = hashlib.sha256(((images + 1) * 127.5).round().to(torch.uint8).numpy().tobytes())
    h.update("\n".join(captions).encode())
    return h.hexdigest()[:12]


def files_digest(paths) -> str:
    """A short hash of files' names and sizes (reading 30k images' bytes would take minutes)."""
    import hashlib

    h = hashlib.sha256()
    for p in paths:
        h.update(f"{Path(p).name}\t{Path(p).stat().st_size}\n".encode())
    return h.hexdigest()[:12]


def coco_fid(source, resolution: int, opts: EvalOptions, device: str, progress: bool) -> dict:
    """Zero-shot FID on the MS-COCO 2014 protocol (see ``coco.py``)."""
    from tqdm.auto import tqdm

    from fluid.eval.coco import image_batches, pairs_digest, sample_coco_pairs
    from fluid.eval.frechet import FeatureStats, InceptionFeatures, cache_key, cached_reference, frechet_distance

    pairs = sample_coco_pairs(opts.coco_captions, opts.coco_images, opts.coco_size, opts.coco_seed)
    inception = InceptionFeatures(opts.inception_weights, device)
    digest = pairs_digest(pairs)
    # Names and captions, and the files' sizes: resized or re-encoded copies of the images make new statistics.
    key = cache_key(
        metric="fid",
        data="coco2014",
        pairs=digest,
        files=files_digest([p.image for p in pairs]),
        n=len(pairs),
        res=resolution,
        features=inception.identity(),
    )

    def compute() -> FeatureStats:
        batches = tqdm(
            image_batches(pairs, resolution), total=-(-len(pairs) // 64), desc="fid: reference", disable=not progress
        )
        return FeatureStats.from_features(torch.cat([inception(b) for b in batches]))

    ref, file, hit = cached_reference(key, compute, opts.cache_dir)
    feats, chunk = [], 64
    for i, start in enumerate(tqdm(range(0, len(pairs), chunk), desc="fid: sampling", disable=not progress)):
        feats.append(inception(source([p.caption for p in pairs[start : start + chunk]], opts.coco_seed + i)))
    return {
        "value": frechet_distance(FeatureStats.from_features(torch.cat(feats)), ref),
        "pairs": len(pairs),
        "sample": digest,
        "resolution": resolution,
        "features": inception.identity(),
        "reference": {"file": str(file), "cached": hit},
    }


def summary_row(rec: dict) -> dict:
    m, row = rec["metrics"], {}
    if "shapes_eval" in m:
        row.update({f"shapes_eval.{k}": v for k, v in m["shapes_eval"]["per_family"].items()})
        row["shapes_eval.overall"] = m["shapes_eval"]["overall"]
        if "images" in m["shapes_eval"]:
            row["shapes_eval.images"] = m["shapes_eval"]["images"]
    if "shapes_fd" in m:
        row["shapes_fd"] = round(m["shapes_fd"]["value"], 3)
        row["shapes_fd.real"] = round(m["shapes_fd"]["real"], 3)
    if "val_loss" in m:
        row["val_loss"] = round(m["val_loss"]["value"], 4)
        if "mse" in m["val_loss"]:
            row["val_mse"] = round(m["val_loss"]["mse"], 4)
    if "detector" in m:
        row["detector.render.min"] = m["detector"]["render"]["min"]
        row["detector.round_trip.min"] = m["detector"]["round_trip"]["min"]
    if "fid" in m:
        row["fid"] = round(m["fid"]["value"], 3)
    return row
