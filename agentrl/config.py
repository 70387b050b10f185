r"""Typed recipe configs: a dataclass is the schema, YAML files and ``key=value`` pairs are overrides.

A recipe declares ``@dataclass class Config`` whose fields are :func:`setting`\ s: a default and a
description, kept in the field's metadata (what ``agentrl train RECIPE --show-config`` prints). :func:`load_config` applies a YAML file, then command-line
overrides (dotted keys reach nested dataclasses: ``learner.lr=1e-5``), and validates every value
against the field's type with pydantic. A wrong key or type is one :class:`ConfigError` naming it.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
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
    return build_config(cls, data)


def _deep_update(base: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value


def setting(default: Any = dataclasses.MISSING, doc: str = "", *, factory: Callable[[], Any] | None = None) -> Any:
    """A documented config field: ``lr: float = setting(1e-6, "peak AdamW learning rate")``.

    The description lives in the field's metadata (``dataclasses.fields(cls)[i].metadata["doc"]``), so
    it is part of the definition at run time: ``agentrl train RECIPE --show-config`` and :func:`describe`
    read it from there, whatever the field's source looks like. ``factory`` builds mutable defaults.
    """
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"doc": doc})
    return dataclasses.field(default=default, metadata={"doc": doc})


def field_doc(f: dataclasses.Field) -> str:
    """The description a field was declared with (:func:`setting`), or ``""``."""
    return str(f.metadata.get("doc", ""))


#: ``sections(config)`` for :func:`describe`: sub-configs a config selects by name (e.g. the options of the
#: algorithm plug-ins a learner config names), as ``{dotted key: (dataclass type, values set for it)}``.
Sections = Callable[[Any], dict[str, tuple[type, dict[str, Any]]]]


def describe(config: Any, prefix: str = "", sections: Sections | None = None) -> list[tuple[str, str, str]]:
    """``(key, value, description)`` for every field of ``config`` (a dataclass instance or class), flattened.

    Nested dataclasses get dotted keys. A section that is ``None`` (``learner.lora``) is listed with the
    sub-keys it would take, shown as ``default (when set)``. ``sections`` adds sub-configs a value selects
    by name (plug-in options). Descriptions come from the fields' metadata (:func:`setting`).
    """
    if isinstance(config, type):
        config = config()
    rows: list[tuple[str, str, str]] = []
    for f in dataclasses.fields(config):
        key, value, doc = prefix + f.name, getattr(config, f.name), field_doc(f)
        if dataclasses.is_dataclass(value):
            rows.append((key, "", doc))
            rows.extend(describe(value, prefix=f"{key}.", sections=sections))
        elif value is None and (sub := _nested_type(type(config), f.name)) is not None:
            rows.append((key, "None", doc))
            rows.extend((k, f"{v} (when set)", d) for k, v, d in describe(sub, prefix=f"{key}.", sections=sections))
        else:
            rows.append((key, repr(value), doc))
    for name, (cls, values) in (sections(config) if sections is not None else {}).items():
        rows.extend(describe(build_config(cls, values), prefix=f"{prefix}{name}.", sections=sections))
    return rows


def build_config(cls: type[C], values: dict[str, Any]) -> C:
    """``cls`` from its defaults and ``values``, types checked (a :class:`ConfigError` naming the key)."""
    import pydantic

    merged = _as_dict(cls())
    _deep_update(merged, values)
    try:
        return pydantic.TypeAdapter(cls).validate_python(merged)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"config key {where!r}: {err['msg']} (got {err.get('input')!r})") from None


def config_dict(cfg: Any) -> dict[str, Any]:
    """A recipe config as plain JSON data (what a run records in the store with its episodes)."""
    import json

    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
