"""Typed recipe configs: a dataclass is the schema, YAML files and ``key=value`` pairs are overrides.

A recipe declares ``@dataclass class Config`` with one comment per field (the documentation ``agentrl
train RECIPE --help-config`` prints). :func:`load_config` applies a YAML file, then command-line
overrides (dotted keys reach nested dataclasses: ``learner.lr=1e-5``), and validates every value
against the field's type with pydantic. A wrong key or type is one :class:`ConfigError` naming it.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import io
import tokenize
from pathlib import Path
from typing import Any, TypeVar

from agentrl.errors import AgentrlError

C = TypeVar("C")


class ConfigError(AgentrlError, ValueError):
    """A config file or override names an unknown key or gives a value of the wrong type."""


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _nested_type(cls: type, name: str) -> type | None:
    """The dataclass type of field ``name`` when it is (optionally) a dataclass, else None."""
    import typing

    hints = typing.get_type_hints(cls)
    hint = hints[name]
    for candidate in (hint, *typing.get_args(hint)):
        if dataclasses.is_dataclass(candidate):
            return candidate
    return None


def _check_keys(cls: type, data: dict[str, Any], prefix: str = "") -> None:
    names = _field_names(cls)
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key '{prefix}{key}'{hint}")
        sub = _nested_type(cls, key)
        if sub is not None and isinstance(value, dict):
            _check_keys(sub, value, prefix=f"{prefix}{key}.")


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {} if child is None else dict(child)
            node[part] = child
        node = child
    node[leaf] = value


def _as_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _as_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    return obj


def load_config(cls: type[C], file: str | Path | None = None, overrides: list[str] | None = None) -> C:
    """Build ``cls`` from its defaults, then ``file`` (YAML), then ``overrides`` (``key=value``)."""
    import pydantic
    import yaml

    data: dict[str, Any] = {}
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys to values")
        data.update(loaded)
    for pair in overrides or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {pair!r} must look like key=value")
        _set_dotted(data, key.strip(), yaml.safe_load(raw) if raw else "")
    _check_keys(cls, data)
    merged = _as_dict(cls())
    _deep_update(merged, data)
    try:
        return pydantic.TypeAdapter(cls).validate_python(merged)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"config key {where!r}: {err['msg']} (got {err.get('input')!r})") from None


def _deep_update(base: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value


def describe(cls: type, prefix: str = "", defaults: Any = None) -> list[tuple[str, str, str]]:
    """``(key, default, comment)`` per field, nested dataclasses flattened with dotted keys.

    The comment is the ``# ...`` at the end of the field's line in the source, so the dataclass
    itself is the documentation. Nested defaults are the values the outer default holds.
    """
    comments = _field_comments(cls)
    defaults = cls() if defaults is None else defaults
    rows: list[tuple[str, str, str]] = []
    for f in dataclasses.fields(cls):
        value = getattr(defaults, f.name)
        if dataclasses.is_dataclass(value):
            rows.extend(describe(type(value), prefix=f"{prefix}{f.name}.", defaults=value))
            continue
        rows.append((prefix + f.name, repr(value), comments.get(f.name, "")))
    return rows


def _field_comments(cls: type) -> dict[str, str]:
    """Field comments of ``cls`` and its dataclass bases (a subclass's own comment wins)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            out.update(_own_field_comments(klass))
    return out


def _own_field_comments(cls: type) -> dict[str, str]:
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out: dict[str, str] = {}
    names = set(_field_names(cls))
    for line in source.splitlines():
        stripped = line.strip()
        name = stripped.split(":", 1)[0].strip()
        if name in names and "#" in stripped:
            try:
                tokens = list(tokenize.generate_tokens(io.StringIO(stripped).readline))
            except (tokenize.TokenError, IndentationError):
                continue
            comment = next((t.string for t in tokens if t.type == tokenize.COMMENT), None)
            if comment:
                out[name] = comment.lstrip("# ").strip()
    return out


def config_dict(cfg: Any) -> dict[str, Any]:
    """A recipe config as plain JSON data (what a run records in the store with its episodes)."""
    import json

    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
