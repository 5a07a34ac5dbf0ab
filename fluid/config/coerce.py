"""Plain data <-> config objects: dataclasses to JSON-ready dicts and back, with YAML, JSON
and command-line values coerced to each field's annotated type (and a clear error when they
cannot be)."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import fields
from typing import Any, get_args, get_origin, get_type_hints

from fluid.config.options import ConfigError


def to_plain(obj):
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, tuple):
        return list(obj)
    return obj


def from_plain(cls, d: dict, prefix: str):
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, not {type(d).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + k for k in sorted(unknown))}; "
            f"valid keys{' in ' + prefix.rstrip('.') if prefix else ''}: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for name, value in d.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = from_plain(tp, value, prefix + name + ".")
        else:
            kwargs[name] = coerce(value, tp, prefix + name)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad value in {prefix.rstrip('.') or 'config'}: {e}") from None


def coerce(value, tp, key: str):
    """Turn YAML/JSON/CLI values into the annotated type, with a clear error."""
    origin, args = get_origin(tp), get_args(tp)
    if value is None:
        if type(None) in args or tp is Any:
            return None
        raise ConfigError(f"{key} may not be null")
    if args and type(None) in args:  # Optional[X]
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0], key)
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.strip("()[] ").split(",") if v.strip()]
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]: any length
            args = (args[0],) * len(value)
        elif len(value) != len(args):
            raise ConfigError(f"{key} takes {len(args)} values, not {len(value)}: {value!r}")
        return tuple(coerce(v, a, key) for v, a in zip(value, args))
    try:
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            return tp(value)
        if tp is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if tp is float:
            return float(value)
        if tp is str:
            return str(value)
    except ValueError:
        choices = (
            f" (choose {', '.join(m.value for m in tp)})" if isinstance(tp, type) and issubclass(tp, enum.Enum) else ""
        )
        raise ConfigError(f"bad value {value!r} for {key}{choices}") from None
    return value
