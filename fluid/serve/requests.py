"""What a page may ask the server for, checked field by field.

Every value from the network is checked here, before it reaches a queue or a model, and
every problem becomes one plain sentence per field, shown on the page next to the form.
The ranges are the server's, narrower than what the pipeline accepts: they bound the cost
of one request so that no user can hold the queue for minutes.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from fluid.config import CFGSchedule

ALL = "all"  # the variant choice that runs every served model side by side


@dataclass(frozen=True)
class Limits:
    """The server's ranges: the seed's, and for each sampling setting a page may set (named as
    the :class:`~fluid.config.SampleConfig` field it overrides; an integer range means a whole
    number)."""

    max_prompt_chars: int = 200
    cfg: tuple[float, float] = (1.0, 20.0)
    temperature: tuple[float, float] = (0.05, 3.0)
    steps: tuple[int, int] = (1, 64)
    head_steps: tuple[int, int] = (1, 250)
    seed: tuple[int, int] = (0, 2**31 - 1)

    def ranges(self) -> dict[str, tuple]:
        """Every ranged field and its (low, high): the seed first, then the sampling settings."""
        names = ["seed"] + [f.name for f in fields(self) if f.name not in ("max_prompt_chars", "seed")]
        return {name: getattr(self, name) for name in names}

    def to_dict(self) -> dict:
        return {"max_prompt_chars": self.max_prompt_chars} | {
            f.name: list(getattr(self, f.name)) for f in fields(self) if f.name != "max_prompt_chars"
        }


@dataclass(frozen=True)
class GenerateRequest:
    """One generation request: ``sample`` holds the sampling settings it gives, by
    :class:`~fluid.config.SampleConfig` field; every other one is the model's own default."""

    prompt: str
    models: tuple[str, ...]
    seed: int = 0
    sample: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class RequestError(ValueError):
    """Bad values: ``errors`` maps each field to what is wrong with it."""

    errors: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return " ".join(self.errors.values())


FIELDS = ("prompt", "model", "seed", "cfg", "cfg_schedule", "temperature", "steps", "head_steps")


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


def _number(name: str, value: Any, low: float, high: float, integer: bool, errors: dict) -> float | int | None:
    """``value`` as a number in [low, high], or None (and a message in ``errors``)."""
    what = "a whole number" if integer else "a number"
    span = f"from {low:g} to {high:g}"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        errors[name] = f"{name} must be {what} {span}."
        return None
    try:
        x = float(value)
    except ValueError:
        errors[name] = f"{name} must be {what} {span}, not {str(value)[:20]!r}."
        return None
    if not math.isfinite(x):
        errors[name] = f"{name} must be {what} {span}, not {value!r}."
        return None
    if integer and x != int(x):
        errors[name] = f"{name} must be a whole number {span}, not {value!r}."
        return None
    if not low <= x <= high:
        errors[name] = f"{name} must be {span}; {x:g} is out of range."
        return None
    return int(x) if integer else x


def clean_prompt(value: Any, limit: int, errors: dict) -> str | None:
    if not isinstance(value, str):
        errors["prompt"] = "Type a prompt (text)."
        return None
    # Line breaks and tabs are spaces to the text encoder; other control characters are noise.
    text = " ".join("".join(" " if unicodedata.category(c) == "Cc" else c for c in value).split())
    if not text:
        errors["prompt"] = "Type a prompt: an empty prompt gives the model nothing to draw."
        return None
    if len(text) > limit:
        errors["prompt"] = f"The prompt is {len(text)} characters long; the limit is {limit}."
        return None
    return text


def parse_request(body: Any, models: Mapping[str, Any], limits: Limits = Limits()) -> GenerateRequest:
    """A checked :class:`GenerateRequest` from a decoded JSON body, or :class:`RequestError`.

    ``models``: the served models by name (their number decides what ``"all"`` means).
    """
    if not isinstance(body, dict):
        raise RequestError({"request": "The request must be a JSON object of form fields."})
    errors: dict[str, str] = {}
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        errors["request"] = f"Unknown field(s): {', '.join(unknown)[:100]}. Known: {', '.join(FIELDS)}."
    prompt = clean_prompt(body.get("prompt"), limits.max_prompt_chars, errors)

    name = body.get("model") if _present(body.get("model")) else next(iter(models))
    if name == ALL:
        chosen: tuple[str, ...] = tuple(models)
    elif isinstance(name, str) and name in models:
        chosen = (name,)
    else:
        errors["model"] = f"model must be one of {', '.join(list(models) + [ALL])}, not {str(name)[:40]!r}."
        chosen = ()

    values: dict[str, Any] = {}
    for key, (low, high) in limits.ranges().items():
        if _present(body.get(key)):
            values[key] = _number(key, body[key], low, high, isinstance(low, int), errors)
    schedule = body.get("cfg_schedule")
    if _present(schedule):
        choices = [s.value for s in CFGSchedule]
        if schedule not in choices:
            errors["cfg_schedule"] = f"cfg_schedule must be one of {', '.join(choices)}, not {str(schedule)[:20]!r}."
        values["cfg_schedule"] = schedule
    if errors:
        raise RequestError(errors)
    return GenerateRequest(prompt=prompt, models=chosen, seed=values.pop("seed", 0), sample=values)
