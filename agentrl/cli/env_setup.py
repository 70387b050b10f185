"""Making an environment from command-line values: ``ENV``, ``--split``, ``-e key=value``, ``--task``.

User mistakes here are caught before the env is built where they can be: an unknown ``-e`` key is
named with the closest constructor parameter, a value of the wrong type with the type the
constructor declares. What only the env can judge (``difficulty=absurd``, an unknown task id) it
reports, as the env contract says, with a ``ValueError`` from its constructor or ``reset``; those
two calls are the only places where the CLI turns a ``ValueError`` into a user error, and only when
the user supplied the values the env rejected.
"""

from __future__ import annotations

import difflib
import inspect
import typing
from collections.abc import Callable
from typing import Any

from agentrl.cli.common import UserError
from agentrl.errors import AgentrlError
from agentrl.registry import EnvEntry

_EVAL_SPLITS = ("valid", "dev", "valid_seen", "test")


def default_eval_split(env: Any) -> str:
    """The split ``agentrl eval`` uses without ``--split``: the benchmark's validation panel if it has one."""
    for name in _EVAL_SPLITS:
        if name in env.splits:
            return name
    return env.splits[0]


def _constructor(entry: EnvEntry) -> Callable[..., Any]:
    if isinstance(entry.entry_point, str):
        from gymnasium.envs.registration import load_env_creator

        return load_env_creator(entry.entry_point)
    return entry.entry_point


def env_parameters(entry: EnvEntry) -> dict[str, inspect.Parameter] | None:
    """The keyword parameters of the env's constructor; ``None`` when it takes ``**kwargs`` (any key)."""
    params = inspect.signature(_constructor(entry)).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {name: p for name, p in params.items() if p.kind in keyword}


def _type_hints(entry: EnvEntry) -> dict[str, Any]:
    target = _constructor(entry)
    try:
        return typing.get_type_hints(target.__init__ if isinstance(target, type) else target)
    except (NameError, TypeError):  # an annotation that names a type only a type checker sees
        return {}


def _shown(annotation: Any) -> str:
    if isinstance(annotation, str):
        return annotation
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def check_env_args(entry: EnvEntry, args: dict[str, tuple[Any, str]]) -> dict[str, Any]:
    """Check ``-e`` arguments (``{key: (value, raw text)}``) against the env's constructor; returns the values.

    An unknown key is one line with a did-you-mean against the constructor's parameters; a value
    that does not fit the parameter's annotation is one line naming the key, the expected type and
    the value. A value is read as YAML first (``3``, ``true``, ``[a, b]``) and as the raw text when
    only that fits (``data_dir=2024`` for a ``str`` parameter).
    """
    import pydantic

    params = env_parameters(entry)
    if params is None:
        return {key: value for key, (value, _) in args.items()}
    hints = _type_hints(entry)
    out: dict[str, Any] = {}
    for key, (value, raw) in args.items():
        if key not in params:
            close = difflib.get_close_matches(key, params, n=1)
            known = ", ".join(params)
            raise UserError(
                f"{entry.id} has no argument {key!r} (-e {key}={raw})",
                hint=(f"did you mean -e {close[0]}=...? " if close else "") + f"its arguments: {known}",
            )
        hint = hints.get(key)
        if hint is None:
            out[key] = value
            continue
        try:
            adapter = pydantic.TypeAdapter(hint)
        except pydantic.PydanticUserError:  # a type pydantic cannot check: the env will
            out[key] = value
            continue
        for candidate in (value, raw) if raw != value else (value,):
            try:
                out[key] = adapter.validate_python(candidate)
                break
            except pydantic.ValidationError:
                continue
        else:
            default = params[key].default
            example = f"e.g. -e {key}={default} (the default); " if default not in (inspect.Parameter.empty, None) else ""
            raise UserError(
                f"-e {key}={raw}: {entry.id} expects {_shown(params[key].annotation)} for {key!r}, got {raw!r}",
                hint=f"{example}`agentrl envs info {entry.alias or entry.id}` lists its arguments",
            )
    return out


def resolve_env(env: str, env_args: dict[str, tuple[Any, str]] | None = None,
                overrides: dict[str, Any] | None = None) -> tuple[EnvEntry, dict[str, Any]]:
    """The registry entry of ``env`` and its checked constructor arguments: ``-e`` values
    (``{key: (value, raw text)}``, see :func:`~agentrl.cli.common.parse_kv_raw`), then ``overrides``,
    the arguments the CLI derives from its own options (``--max-turns``), checked the same way."""
    import agentrl

    entry = agentrl.registry.resolve(env)
    combined = dict(env_args or {})
    combined.update({key: (value, str(value)) for key, value in (overrides or {}).items()})
    if entry.missing():  # the constructor cannot be imported; agentrl.make says which extra to install
        return entry, {key: value for key, (value, _) in combined.items()}
    return entry, check_env_args(entry, combined)


def make_env(entry: EnvEntry, kwargs: dict[str, Any], *, split: str | None = None) -> Any:
    """Build the env of ``entry`` with the user's arguments (from :func:`resolve_env`) and ``split``.

    A ``ValueError`` from the constructor means, by the env contract, that it rejected an argument
    value; when the user gave arguments it is reported as theirs to fix, naming them.
    """
    import agentrl

    kwargs = dict(kwargs) | ({"split": split} if split is not None else {})
    try:
        return agentrl.make(entry.id, **kwargs)
    except ValueError as exc:
        if not kwargs or isinstance(exc, AgentrlError):
            raise  # nothing of the user's was passed (a bug), or an error with its own line and hint
        given = " ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise UserError(f"{entry.id} rejected {given}: {exc}",
                        hint=f"`agentrl envs info {entry.alias or entry.id}` lists its arguments") from exc  # fmt: skip


def reset_on_task(instance: Any, task: str | None, seed: int) -> tuple[str, dict[str, Any]]:
    """``reset`` on the user's ``--task`` (random from the split without one); an id the env rejects
    is one line with the first ids of the panel."""
    try:
        return instance.reset(seed=seed, options={"task": task} if task else None)
    except ValueError as exc:
        if task is None:
            raise
        panel = instance.task_ids()
        preview = ", ".join(panel[:3]) + (", ..." if len(panel) > 3 else "")
        raise UserError(str(exc), hint=f"tasks of split {instance.split!r}: {preview}") from exc
