"""Environment registry: agentrl ids live in Gymnasium's own registry, under the ``agentrl`` namespace.

``import agentrl`` registers the built-in ids, so ``gymnasium.make("agentrl/TextWorld-v0")`` works.
Nothing heavy is imported until an env is made: entry points are ``"module:Class"`` strings.

Third-party packages add environments through the entry-point group ``agentrl.environments``; each
entry point names a callable that calls :func:`register`. They are discovered lazily, the first time
:func:`list_envs`, :func:`make` or the command line needs them.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import warnings
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import gymnasium as gym

from agentrl.core import TextEnv
from agentrl.errors import AgentrlError

ENTRY_POINT_GROUP = "agentrl.environments"
#: ``gymnasium.make(REMOTE_ID, url=...)``: an env served by ``agentrl env-serve`` (see :mod:`agentrl.envserver`).
REMOTE_ID = "agentrl/Remote-v0"


class UnknownEnvError(AgentrlError, KeyError):
    """No environment is registered under that id or alias."""

    def __str__(self) -> str:  # KeyError quotes its message; we want a plain line
        return str(self.args[0])


class MissingDependencyError(AgentrlError, ImportError):
    """An environment needs an optional dependency that is not installed."""


class NotATextEnvError(AgentrlError, TypeError):
    """An entry point gives a plain ``gymnasium.Env``, not an :class:`agentrl.TextEnv`.

    Every agentrl command relies on what only the TextEnv contract declares: task panels
    (``splits``, ``task_ids``), ``expert_action``, ``max_turns``, text observations and actions, and
    the info keys (``won``, ``progress``, ...). Guessing them for an arbitrary env (seeds as tasks,
    reward as progress) would produce numbers that mean nothing, so such envs are refused.
    """


#: What the commands use that a plain gymnasium.Env does not have (checked on the class).
_TEXTENV_API = ("splits", "task_ids()", "expert_action()", "max_turns")


def _not_a_textenv(env_id: str, cls: type) -> NotATextEnvError:
    lacks = [name for name in _TEXTENV_API if not hasattr(cls, name.rstrip("()"))]
    what = ", ".join(lacks) + (" and " if lacks else "") + "the info keys of the text contract"
    return NotATextEnvError(
        f"{env_id}: {cls.__module__}.{cls.__qualname__} is not an agentrl.TextEnv, so it lacks {what}; "
        "subclass agentrl.TextEnv (README: Registering an environment)"
    )


@dataclass(frozen=True)
class EnvEntry:
    """What agentrl knows about a registered id, beyond Gymnasium's ``EnvSpec``."""

    id: str
    entry_point: str | Any
    alias: str | None = None
    description: str = ""
    requires: tuple[str, ...] = ()  # importable modules the env needs
    extra: str | None = None  # the pip extra that installs them
    kwargs: dict[str, Any] = field(default_factory=dict)

    def missing(self) -> list[str]:
        """Required modules that cannot be imported here."""
        return [m for m in self.requires if importlib.util.find_spec(m) is None]


_ENTRIES: dict[str, EnvEntry] = {}
_ALIASES: dict[str, str] = {}
_plugins_loaded = False


def register(
    id: str,
    entry_point: str | Any,
    *,
    alias: str | None = None,
    description: str = "",
    requires: tuple[str, ...] | list[str] = (),
    extra: str | None = None,
    **kwargs: Any,
) -> None:
    """Register ``id`` (``namespace/Name-vN``) with Gymnasium and agentrl.

    ``entry_point`` is a ``"module:Class"`` string (imported only when the env is made) or a callable;
    ``kwargs`` are default constructor arguments; ``alias`` is a short name for :func:`make` and the
    command line; ``requires``/``extra`` let :func:`make` say which extra to install when a module is
    missing. Registering an id again replaces it.

    The env must be an :class:`agentrl.TextEnv`: a class that is not is refused here with
    :class:`NotATextEnvError`; a ``"module:Class"`` string is imported only when the env is made (so
    listing envs imports no engine), and :func:`make` refuses it then.
    """
    if "/" not in id or "-v" not in id:
        raise ValueError(f"env ids look like 'namespace/Name-vN', got {id!r}")
    if inspect.isclass(entry_point) and not issubclass(entry_point, TextEnv):
        raise _not_a_textenv(id, entry_point)
    if id in gym.registry:
        del gym.registry[id]
    gym.register(
        id=id,
        entry_point=entry_point,
        kwargs=dict(kwargs),
        disable_env_checker=True,  # agentrl.check_env is the checker; make() returns the env itself
        order_enforce=False,  # TextEnv enforces reset-before-step and raises EpisodeOver
    )
    entry = EnvEntry(id, entry_point, alias, description, tuple(requires), extra, dict(kwargs))
    _ENTRIES[id] = entry
    if alias:
        _ALIASES[alias.lower()] = id


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()()
        except Exception as exc:  # a broken plugin must not break agentrl for everyone else
            warnings.warn(f"agentrl: environment plugin {ep.name!r} ({ep.value}) failed to load: {exc}", stacklevel=2)


def list_envs() -> list[EnvEntry]:
    """Every registered agentrl environment (built-in and plugins), sorted by id."""
    _load_plugins()
    return [_ENTRIES[k] for k in sorted(_ENTRIES)]


def resolve(id_or_alias: str) -> EnvEntry:
    """Find the entry for an id (``agentrl/WebShop-v1``) or alias (``webshop``)."""
    _load_plugins()
    if id_or_alias in _ENTRIES:
        return _ENTRIES[id_or_alias]
    key = id_or_alias.lower()
    if key in _ALIASES:
        return _ENTRIES[_ALIASES[key]]
    for entry_id in _ENTRIES:  # accept the id without its namespace or case: "TextWorld-v0"
        if entry_id.split("/", 1)[-1].lower() == key:
            return _ENTRIES[entry_id]
    known = ", ".join(sorted(_ALIASES)) or "none"
    names = {**{alias: alias for alias in _ALIASES}, **{entry_id.lower(): entry_id for entry_id in _ENTRIES}}
    close = difflib.get_close_matches(key, names, n=1)
    guess = f"did you mean {names[close[0]]!r}? " if close else ""
    raise UnknownEnvError(
        f"unknown environment {id_or_alias!r}; known aliases: {known}", hint=f"{guess}see `agentrl envs list`"
    )


def _check_installed(entry: EnvEntry) -> None:
    missing = entry.missing()
    if missing:
        hint = f"pip install 'agentrl[{entry.extra}]'" if entry.extra else f"pip install {' '.join(missing)}"
        raise MissingDependencyError(f"{entry.id} needs {', '.join(missing)}, which is not installed: {hint}")


def make(id_or_alias: str, **kwargs: Any):
    """Create an environment by id or alias; ``kwargs`` override the registered defaults.

    Returns the env itself (no Gymnasium wrappers), so ``task_ids`` and ``expert_action`` are
    directly callable. An ``http(s)://`` URL is an env served by ``agentrl env-serve``: a
    :class:`~agentrl.envserver.client.RemoteEnv` session on it (``split``, ``max_turns`` as usual).
    Raises :class:`NotATextEnvError` (after closing it) when the entry point built a plain
    ``gymnasium.Env``.
    """
    if id_or_alias.startswith(("http://", "https://")):
        return gym.make(REMOTE_ID, url=id_or_alias, **kwargs).unwrapped
    entry = resolve(id_or_alias)
    _check_installed(entry)
    env = gym.make(entry.id, **kwargs).unwrapped
    if not isinstance(env, TextEnv):
        error = _not_a_textenv(entry.id, type(env))
        env.close()
        raise error
    return env


def env_class(id_or_alias: str) -> type | None:
    """The class an id's entry point names (imported, not instantiated); ``None`` for a factory function.

    Class attributes such as ``splits`` and ``prompt`` are read from it without building an env.
    """
    entry = resolve(id_or_alias)
    _check_installed(entry)
    target = entry.entry_point
    if isinstance(target, str):
        module, _, name = target.partition(":")
        target = getattr(importlib.import_module(module), name)
    return target if isinstance(target, type) else None


def _register_builtins() -> None:
    # A remote env is a connection, not a benchmark: in Gymnasium's registry (gymnasium.make with url=...)
    # but not among agentrl's ids, which list_envs, the CLI and the every-env checker walk.
    if REMOTE_ID in gym.registry:
        del gym.registry[REMOTE_ID]
    gym.register(id=REMOTE_ID, entry_point="agentrl.envserver.client:RemoteEnv", disable_env_checker=True, order_enforce=False)
    register(
        "agentrl/TextWorld-v0",
        "agentrl.environments.textworld.env:TextWorldEnv",
        alias="textworld",
        description="TextWorld quests generated locally from a seed (cooking-free treasure hunts)",
        requires=("textworld",),
        extra="textworld",
    )
    register(
        "agentrl/ALFWorld-v0",
        "agentrl.environments.alfworld.env:ALFWorldEnv",
        alias="alfworld",
        description="ALFWorld household tasks on its TextWorld/PDDL engine (valid_seen / valid_unseen panels)",
        requires=("alfworld", "textworld"),
        extra="alfworld",
    )
    register(
        "agentrl/ScienceWorld-v0",
        "agentrl.environments.scienceworld.env:ScienceWorldEnv",
        alias="scienceworld",
        description="ScienceWorld's 30 science tasks on its JVM engine (train / dev / test variation panels)",
        requires=("scienceworld",),
        extra="scienceworld",
    )
    register(
        "agentrl/WebShop-v1",
        "agentrl.environments.webshop.env:WebShopEnv",
        alias="webshop",
        description="WebShop's text shop (search/click, original reward); real catalog via data_dir, else a small built-in one (not the benchmark)",
        requires=("rapidfuzz", "bm25s", "Stemmer"),
        extra="webshop",
    )
    register(
        "agentrl/MLE-v0",
        "agentrl.environments.mle.env:MLEEnv",
        alias="mle",
        description="ML engineering: write a program that trains a model and a submission, run in a sandbox (scikit-learn data sets; MLE-bench via mlebench_dir)",
        requires=("sklearn", "pandas"),
        extra="mle",
    )


_register_builtins()
