"""ShapesEval: GenEval's six task families on the built-in ``shapes`` prompts.

For each family, ``prompts_per_family`` captions are drawn (with a fixed seed) from the
family's templates, and each is generated with ``seeds`` seeds. The detector reads every
image and ``detector.score`` applies GenEval's rule of the family; a family's score is the
fraction of its images judged right, the overall score the mean over families (GenEval's
"overall"). Images are scored by the classical segmentation plus the learned kind reader
(``fluid.shapes.eval.classifier``), whose accuracy on real renders and on the tokenizers' round trips
``detector_accuracy`` measures.

Any image source can be evaluated: a callable ``(prompts, seed) -> (B, 3, H, W)``; a
``FluidPipeline`` through ``pipeline_source``, and the real renders of the same prompts
(``ShapesEval.real_images``), which are the ceiling and the detector's own check.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Callable, Sequence

import numpy as np
import torch

from fluid.shapes.dataset import ShapesDataset
from fluid.shapes.eval.detector import Detection, detect_batch, score
from fluid.shapes.render import render
from fluid.shapes.scenes import FAMILIES, Family, SceneSpec, parse_caption, prompts_for_family, sample_spec

ImageSource = Callable[[list[str], int], torch.Tensor]  # (prompts, seed) -> (B, 3, H, W) in [-1, 1]
PROMPT_SEED = 0
SHIPPED = "shipped"  # classifier="shipped": the learned kind reader in fluid/assets/eval
SAME = object()  # score(classifier=SAME): this evaluation's own kind reader


def pipeline_source(pipe, **sample_overrides) -> ImageSource:
    """A FluidPipeline as an image source (tensors in [-1, 1])."""
    return lambda prompts, seed: pipe(prompts, seed=seed, output_type="tensor", **sample_overrides).float().cpu()


def _resolve_classifier(classifier):
    if classifier == SHIPPED:
        from fluid.shapes.eval.classifier import load_shape_classifier

        return load_shape_classifier()
    return classifier


def scene_for_caption(caption: str, rng: random.Random, tries: int = 100_000) -> SceneSpec:
    """A random scene of the dataset's layout distribution whose caption is ``caption``."""
    family = parse_caption(caption).family
    for _ in range(tries):
        spec = sample_spec(rng, family)
        if spec.caption == caption:
            return spec
    raise RuntimeError(f"no scene for {caption!r} in {tries} draws")


@dataclasses.dataclass(frozen=True)
class EvalItem:
    family: Family
    prompt: str
    seed: int
    row: int  # the prompt's position in its family's list


@dataclasses.dataclass
class ShapesEvalResult:
    items: list[EvalItem]
    correct: list[bool]
    detections: list[list[Detection]]
    per_family: dict[str, float]
    overall: float

    def to_dict(self) -> dict:
        return {
            "overall": round(self.overall, 4),
            "per_family": {k: round(v, 4) for k, v in self.per_family.items()},
            "images": len(self.items),
            "correct": int(sum(self.correct)),
        }


class ShapesEval:
    """N prompts x K seeds per family, scored by the detector.

    Args:
        prompts_per_family: N. A family with fewer distinct captions (``single_object`` has
            4) repeats its shuffled list to reach N.
        seeds: K (seeds 0..K-1) or the seeds themselves.
        families: the families to evaluate (default all six).
        resolution: the side of ``real_images``.
        classifier: the kind reader: "shipped", a ShapeClassifier, or None for the template fit.
        strict: also fail images with extra objects (not GenEval's rule; see ``detector.score``).
    """

    def __init__(
        self,
        prompts_per_family: int = 8,
        seeds: int | Sequence[int] = 4,
        families: Sequence[Family | str] = FAMILIES,
        resolution: int = 64,
        classifier=SHIPPED,
        strict: bool = False,
        prompt_seed: int = PROMPT_SEED,
    ):
        if prompts_per_family < 1:
            raise ValueError(f"prompts_per_family must be >= 1, not {prompts_per_family}")
        self.seeds = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
        if not self.seeds:
            raise ValueError("seeds must not be empty")
        self.families = [Family(f) for f in families]
        self.resolution, self.strict = resolution, strict
        self.classifier = _resolve_classifier(classifier)
        self.prompts = {f: self._draw_prompts(f, prompts_per_family, prompt_seed) for f in self.families}
        self.items = [
            EvalItem(f, p, s, r) for f in self.families for s in self.seeds for r, p in enumerate(self.prompts[f])
        ]

    @staticmethod
    def _draw_prompts(family: Family, n: int, seed: int) -> list[str]:
        pool = prompts_for_family(family)
        rng = random.Random(f"shapes-eval/{seed}/{family.value}")
        out = []
        while len(out) < n:
            block = list(pool)
            rng.shuffle(block)
            out += block
        return out[:n]

    def __len__(self) -> int:
        return len(self.items)

    def config(self) -> dict:
        return {
            "prompts_per_family": len(next(iter(self.prompts.values()))),
            "seeds": self.seeds,
            "families": [f.value for f in self.families],
            "strict": self.strict,
            "kind_reader": "learned" if self.classifier is not None else "template",
        }

    def generate(self, source: ImageSource, progress: bool = True) -> torch.Tensor:
        """Images (len(self), 3, H, W) in item order: one ``source`` call per (family, seed)."""
        from tqdm.auto import tqdm

        out = []
        with tqdm(total=len(self.items), desc="shapes eval: sampling", unit="img", disable=not progress) as bar:
            for f in self.families:
                for s in self.seeds:
                    images = source(self.prompts[f], s)
                    if images.shape[0] != len(self.prompts[f]):
                        raise ValueError(
                            f"the image source returned {images.shape[0]} images for {len(self.prompts[f])} prompts"
                        )
                    out.append(images.float().cpu())
                    bar.update(len(images))
        return torch.cat(out)

    def real_images(self) -> torch.Tensor:
        """Renders of the items' captions: each a random layout seeded by (prompt, seed, row)."""
        specs = [scene_for_caption(it.prompt, random.Random(f"{it.prompt}/{it.seed}/{it.row}")) for it in self.items]
        return render(specs, self.resolution)

    def score(self, images: torch.Tensor, progress: bool = False, classifier=SAME) -> ShapesEvalResult:
        """Detect and judge each image (item order); ``classifier`` overrides this
        evaluation's kind reader (None: the template fit)."""
        from tqdm.auto import tqdm

        if images.dim() != 4 or images.shape[0] != len(self.items):
            raise ValueError(f"expected ({len(self.items)}, 3, H, W) images in item order, got {tuple(images.shape)}")
        classifier = self.classifier if classifier is SAME else _resolve_classifier(classifier)
        dets = [
            detect_batch(images[i : i + 1], classifier=classifier)[0]
            for i in tqdm(range(len(images)), desc="shapes eval: detecting", unit="img", disable=not progress)
        ]
        correct = [bool(score(it.prompt, d, strict=self.strict)) for it, d in zip(self.items, dets)]
        per_family = {
            f.value: float(np.mean([c for it, c in zip(self.items, correct) if it.family is f])) for f in self.families
        }
        return ShapesEvalResult(self.items, correct, dets, per_family, float(np.mean(list(per_family.values()))))

    def __call__(self, source: ImageSource, progress: bool = True) -> tuple[ShapesEvalResult, torch.Tensor]:
        images = self.generate(source, progress)
        return self.score(images, progress), images


# ----------------------------------------------------------------------------- detector accuracy


def detector_accuracy(
    tokenizers: dict[str, object] | None = None,
    per_family: int = 200,
    classifier=SHIPPED,
    resolution: int = 64,
    split: str = "test",
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """The detector's accuracy per family: the fraction of real ``split`` scenes it judges
    right, on clean renders ("render") and after each tokenizer's round trip (the posterior
    mean for KL), keyed by the tokenizers' names. Also "blobs_named": the fraction of
    irregular blobs (the shape classifier's "other" class, drawn with a seed it was not
    trained on) that it files under a kind."""
    from tqdm.auto import tqdm

    from fluid.shapes.eval.classifier_data import blob_scenes, round_trip

    classifier = _resolve_classifier(classifier)
    out: dict = {"render": {}, **{name: {} for name in (tokenizers or {})}}
    fams = tqdm(FAMILIES, desc="detector accuracy", unit="family", disable=not progress)
    for family in fams:
        ds = ShapesDataset(split, resolution, families=[family])
        specs = [ds.spec(i) for i in range(per_family)]
        images = render(specs, resolution)
        sources = {"render": images}
        for name, tok in (tokenizers or {}).items():
            sources[name] = round_trip(images, tok)
        for name, x in sources.items():
            dets = detect_batch(x, classifier=classifier)
            out[name][family.value] = float(np.mean([score(s, d) for s, d in zip(specs, dets)]))
    for table in list(out.values()):
        table["min"] = min(table.values())
    rng = np.random.default_rng(int(hashlib.sha256(f"held-out blobs {seed}".encode()).hexdigest()[:8], 16))
    blobs, objects = blob_scenes(per_family, rng, resolution)
    dets = detect_batch(blobs, classifier=classifier)
    # blob scenes may hold one regular shape as well: count only detections away from it
    named = [
        d.kind != "unknown" for ds_, objs in zip(dets, objects) for d in ds_ if not _near_regular(d, objs, resolution)
    ]
    out["blobs_named"] = float(np.mean(named)) if named else 0.0
    out["sources"] = ["render", *(tokenizers or {})]
    out["per_family"], out["split"], out["resolution"] = per_family, split, resolution
    return out


def _near_regular(det: Detection, objects, resolution: int) -> bool:
    """Whether the detection's centre lies on a regular shape (class < OTHER) of a blob scene."""
    from fluid.shapes.eval.classifier import OTHER

    x, y = min(int(det.cx * resolution), resolution - 1), min(int(det.cy * resolution), resolution - 1)
    return any(cls != OTHER and alpha[y, x] > 0.5 for alpha, cls in objects)
