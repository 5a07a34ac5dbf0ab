"""The served models, the request queue and the one thread that runs the models.

One worker thread runs the requests one at a time: a model on a CPU or a single GPU is
not faster for running two at once, and one thread keeps the memory bounded (one
generation in flight). The order is fair between clients: each client (a browser tab, or
an address) has its own first-in first-out line and the worker takes from the lines in
turn, so a client that sends many requests delays others by at most one request each
round, never by all of its own. Each request's cost is bounded by ``Limits``, so waiting
times are bounded too. The queue is bounded in all (``max_pending``) and per client
(``max_per_client``): beyond that a request is refused with a message instead of piling
up. A request whose page went away is dropped unstarted, or stopped at its next step, so
that abandoned work does not delay the others.

Progress reaches the page as events: ``queued`` (position), ``loading``, ``frame`` (a
PNG of the image so far, grey where tokens are not generated yet), ``image``, ``warning``,
``failure`` and a final ``end``.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import io
import logging
import math
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fluid import checkpoint as ckpt
from fluid.assets import generator_path
from fluid.config import VARIANTS, FluidConfig, Order, TokenType
from fluid.model.masking import tokens_per_step
from fluid.sample.grid import masked_preview
from fluid.sample.pipeline import FluidPipeline, to_pil
from fluid.serve.requests import GenerateRequest
from fluid.text.cache import CachedTextEncoder
from fluid.text.encoders import build_text_encoder

log = logging.getLogger("fluid.serve")


# ----------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelInfo:
    """What the page needs to know about a served model, read from its config alone."""

    name: str
    source: str
    cfg: FluidConfig

    @property
    def variant(self) -> str:
        return self.cfg.model.variant

    def defaults(self) -> dict[str, Any]:
        m, s = self.cfg.model, self.cfg.sample
        out = {
            "cfg": s.cfg,
            "cfg_schedule": s.cfg_schedule.value,
            "temperature": s.temperature,
            "steps": min(s.steps, m.num_tokens),
        }
        if m.token_type == TokenType.CONTINUOUS:
            out["head_steps"] = s.head_steps if s.head_steps is not None else m.head_sample_steps
        return out

    def to_dict(self) -> dict[str, Any]:
        m = self.cfg.model
        return {
            "name": self.name,
            "variant": self.variant,
            "source": self.source,
            "tokens": m.num_tokens,
            "order": m.order.value,
            "token_type": m.token_type.value,
            "resolution": self.cfg.data.resolution,
            "uses_steps": m.order == Order.RANDOM,
            "uses_head_steps": m.token_type == TokenType.CONTINUOUS,
            "defaults": self.defaults(),
        }


class ModelSet:
    """Served models by name, loaded on first use (in the worker thread) and kept.

    ``sources`` maps a name to a pipeline, checkpoint or run folder (or hub id), or to None
    for the shipped model of that variant name. Models with the same text encoder share it;
    ``text_encoder``, if given, serves them all (tests pass one they already loaded).
    """

    def __init__(self, sources: dict[str, str | Path | None], device: str = "cpu", text_encoder=None):
        if not sources:
            raise ValueError("serve at least one model")
        from fluid.sample.folder import resolve_source

        self.device = device
        self.paths: dict[str, Path] = {}
        self.info: dict[str, ModelInfo] = {}
        for name, src in sources.items():
            path = resolve_source(src) if src is not None else generator_path(name)
            self.paths[name] = path
            self.info[name] = ModelInfo(name, "shipped" if src is None else str(src), ckpt.read_config(path))
        self._pipes: dict[str, FluidPipeline] = {}
        self._text: dict[tuple, CachedTextEncoder] = {}
        self._given_text = text_encoder

    @classmethod
    def shipped(
        cls, variants: list[str] | tuple[str, ...] = VARIANTS, device: str = "cpu", text_encoder=None
    ) -> ModelSet:
        return cls({v: None for v in variants}, device, text_encoder)

    def __iter__(self):
        return iter(self.info)

    def __getitem__(self, name: str) -> ModelInfo:
        return self.info[name]

    def __len__(self) -> int:
        return len(self.info)

    def loaded(self, name: str) -> bool:
        return name in self._pipes

    def get(self, name: str) -> FluidPipeline:
        if name not in self._pipes:
            t0 = time.perf_counter()
            cfg = self.info[name].cfg
            key = (cfg.text.encoder, cfg.text.name_or_path, cfg.text.max_length, cfg.text.dim)
            if self._given_text is not None:
                self._text[key] = self._given_text
            elif key not in self._text:
                # Bounded memo: a demo sees the same prompts again and again (side by side, retries).
                self._text[key] = CachedTextEncoder(build_text_encoder(cfg.text, device=self.device), max_items=10_000)
            self._pipes[name] = FluidPipeline.from_pretrained(
                self.paths[name], device=self.device, text_encoder=self._text[key]
            )
            log.info("loaded %s (%s) in %.1f s", name, self.info[name].source, time.perf_counter() - t0)
        return self._pipes[name]


# ----------------------------------------------------------------------------- jobs


class JobCancelled(Exception):
    """The page that asked for a job went away."""


class QueueFull(RuntimeError):
    pass


class Job:
    """One request and the events it produced, read by the page's event stream.

    Events are appended by the worker thread and read by the server's event loop; the
    loop is woken through ``call_soon_threadsafe``, never by blocking it.
    """

    def __init__(self, request: GenerateRequest, loop: asyncio.AbstractEventLoop):
        self.id = uuid.uuid4().hex[:16]
        self.request = request
        self.events: list[tuple[str, dict]] = []
        self.finished = False
        self.watchers = 0
        self.watched = False
        self.submitted = time.perf_counter()
        self.first_frame: float | None = None
        self.done_at: float | None = None
        self._loop = loop
        self.wake = asyncio.Event()

    @property
    def abandoned(self) -> bool:
        """Someone watched this job and nobody does any more (the page was closed or moved on)."""
        return self.watched and self.watchers == 0

    def emit(self, kind: str, **data) -> None:
        self.events.append((kind, data))
        self._notify()

    def finish(self, status: str, **data) -> None:
        self.done_at = time.perf_counter()
        timing = {
            "seconds": round(self.done_at - self.submitted, 3),
            "first_frame_s": None if self.first_frame is None else round(self.first_frame - self.submitted, 3),
        }
        self.events.append(("end", {"status": status, **timing, **data}))
        self.finished = True
        self._notify()

    def _notify(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self.wake.set)
        except RuntimeError:  # the server's loop has closed: nobody is listening
            pass


def png_data_url(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def frame_count(cfg: FluidConfig, steps: int | None) -> int:
    """How many steps (frames) a generation takes: one per token in raster order."""
    n = cfg.model.num_tokens
    if cfg.model.order == Order.RASTER:
        return n
    return len(tokens_per_step(n, steps or cfg.sample.steps))


def _encoder_token_count(text_encoder, prompt: str) -> int | None:
    """Encoder tokens of ``prompt`` (special tokens included), where the encoder can tell."""
    inner = getattr(text_encoder, "encoder", text_encoder)
    tokenizer = getattr(inner, "tokenizer", None)
    if tokenizer is None:
        return None
    return len(tokenizer(prompt, add_special_tokens=True, verbose=False)["input_ids"])


class Scheduler:
    """The bounded, per-client round-robin queue and its single worker thread."""

    def __init__(self, models: ModelSet, max_pending: int = 100, max_per_client: int = 50):
        self.models = models
        self.max_pending = max_pending
        self.max_per_client = max_per_client
        self._lines: collections.OrderedDict[str, collections.deque[Job]] = collections.OrderedDict()
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.running: Job | None = None
        self.completed = 0

    # -- the server's side ---------------------------------------------------------------

    def start(self, preload: bool = True) -> None:
        self._thread = threading.Thread(target=self._work, args=(preload,), name="fluid-serve-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, job: Job, client: str = "") -> int:
        """Queue ``job`` in ``client``'s line; its 1-based position in the order of service."""
        with self._cond:
            waiting = self.pending
            if waiting >= self.max_pending:
                raise QueueFull(f"The server is busy: {waiting} requests are waiting. Try again in a minute.")
            line = self._lines.setdefault(client, collections.deque())
            if len(line) >= self.max_per_client:
                raise QueueFull(f"You have {len(line)} requests waiting already; wait for them to finish.")
            line.append(job)
            order = self.order()
            job.emit("queued", position=order.index(job) + 1, running=self.running is not None)
            self._cond.notify()
        return order.index(job) + 1

    @property
    def pending(self) -> int:
        return sum(len(line) for line in self._lines.values())

    def order(self) -> list[Job]:
        """The waiting jobs in the order they will run: one from each line in turn."""
        lines = [list(line) for line in self._lines.values()]
        return [line[i] for i in range(max(map(len, lines), default=0)) for line in lines if i < len(line)]

    # -- the worker's side ---------------------------------------------------------------

    def _next(self) -> Job | None:
        with self._cond:
            while not self._lines and not self._stop:
                self._cond.wait()
            if self._stop:
                return None
            client, line = next(iter(self._lines.items()))
            job = line.popleft()
            del self._lines[client]
            if line:  # to the back: every other waiting client goes first
                self._lines[client] = line
            self.running = job
            for i, waiting in enumerate(self.order()):
                waiting.emit("queued", position=i + 1, running=True)
            return job

    def _work(self, preload: bool) -> None:
        if preload:
            for name in self.models:
                try:
                    self.models.get(name)
                except Exception:  # noqa: BLE001 - reported again, to the page, when a job needs it
                    log.exception("could not load %s", name)
        while (job := self._next()) is not None:
            try:
                if job.abandoned:
                    job.finish("cancelled")
                    continue
                self._run(job)
            finally:
                self.running = None
                self.completed += 1

    def _run(self, job: Job) -> None:
        try:
            for name in job.request.models:
                self._generate(job, name)
            job.finish("done")
        except JobCancelled:
            job.finish("cancelled")
        except Exception as e:  # noqa: BLE001 - the page gets a sentence, the log the traceback
            log.exception("request %s failed", job.id)
            job.emit(
                "failure",
                message=f"Generation failed ({type(e).__name__}: {str(e)[:300]}). The details are in the server's log.",
            )
            job.finish("error")

    def _generate(self, job: Job, name: str) -> None:
        r = job.request
        if not self.models.loaded(name):
            job.emit("loading", model=name)
        pipe = self.models.get(name)
        info = self.models[name]
        total = frame_count(pipe.cfg, r.sample.get("steps"))
        grid = math.isqrt(pipe.cfg.model.num_tokens)
        t0 = time.perf_counter()

        def on_step(step: int, tokens: torch.Tensor, known: torch.Tensor) -> None:
            if job.abandoned:
                raise JobCancelled
            preview = masked_preview(pipe.decode(tokens), known.to(pipe.device), grid)  # (1, 3, H, W)
            if job.first_frame is None:
                job.first_frame = time.perf_counter()
            job.emit(
                "frame",
                model=name,
                step=step + 1,
                steps=total,
                known=int(known[0].sum()),
                tokens=known.shape[1],
                image=png_data_url(to_pil(preview)[0]),
            )

        count = _encoder_token_count(pipe.text_encoder, r.prompt)
        limit = pipe.cfg.text.max_length
        if count is not None and count > limit:
            job.emit(
                "warning",
                model=name,
                message=f"The prompt has {count} text-encoder tokens; {name} reads the first {limit}.",
            )
        tokens = pipe.generate_tokens([r.prompt], seed=r.seed, on_step=on_step, **r.sample)
        image = to_pil(pipe.decode(tokens))[0]
        defaults = info.defaults()  # the settings this model uses (no head steps for discrete tokens)
        used = defaults | {k: v for k, v in r.sample.items() if k in defaults}
        if pipe.cfg.model.order == Order.RASTER:
            used.pop("steps", None)  # raster order makes one step per token
        else:
            used["steps"] = total  # capped at the token count
        job.emit(
            "image",
            model=name,
            image=png_data_url(image),
            seconds=round(time.perf_counter() - t0, 3),
            seed=r.seed,
            settings=used,
        )
