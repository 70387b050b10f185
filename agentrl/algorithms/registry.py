"""Algorithms as plug-ins: advantage estimators, advantage shapers, policy losses and loss terms, by name.

The learner composes one of each kind it needs and does not grow when a method is added:

==============  ===========================================================  ==========================
kind            what it computes                                             built in
==============  ===========================================================  ==========================
``advantage``   per-step advantages from returns and groups                  ``grpo``, ``dr_grpo``, ``gigpo``
``shaping``     a transform of per-step advantages (applied in order)        ``empg``, ``duration``
``policy_loss`` the per-token policy-gradient loss ``[n, R]``                ``clip``, ``clip_cov``, ``kl_cov``
``term``        a scalar added to the loss (with its own metrics)            ``kl``, ``epo``, ``entropy``
==============  ===========================================================  ==========================

A plug-in is a class with a ``Config`` dataclass (its options, one documented field each),
registered with :func:`register`; a recipe picks it by name (``LearnerConfig.shaping=["empg"]``)
and sets options by name (``LearnerConfig.options={"empg": {"k": 2.0}}``). Adding one is one module
and a ``@register``: no edit to the learner or its config. Third-party packages register through
the entry-point group ``agentrl.algorithms`` (a callable that imports the plug-ins' module).

Whole-batch statistics: a data-parallel learner gives each rank a shard of the batch (whole GRPO
groups), so anything a plug-in computes over the batch (a min, a mean, a count) must go through the
:class:`Reduce` it is given: ``reduce.sum(x)`` is the sum over ranks of each rank's local ``x``
(the identity in one process). Every rank calls the same reductions in the same order.
"""

from __future__ import annotations

import abc
import dataclasses
import difflib
import importlib
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, ClassVar

import torch

KINDS = ("advantage", "shaping", "policy_loss", "term")
ENTRY_POINT_GROUP = "agentrl.algorithms"
_BUILTIN_MODULES = ("grpo", "gigpo", "empg", "duration", "ppo", "covariance", "kl", "epo", "entropy")


class AlgorithmConfigError(ValueError):
    """An unknown plug-in name or option, or an option of the wrong type (one line, with a hint)."""


class Reduce:
    """Whole-batch reductions of per-rank values; in one process each is the identity."""

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def min(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def max(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """Mean of ``values`` over the whole batch (all ranks' entries); in one process ``values.mean()``."""
        total = self.sum(values.sum())
        count = self.sum(torch.tensor(float(values.numel()), dtype=values.dtype, device=values.device))
        return total / count


@dataclass
class Steps:
    """The batch as advantage plug-ins see it: one row per step (agent turn with sampled ids).

    A trajectory's steps are contiguous and in turn order (on every rank: a shard holds whole
    trajectories). ``entropy[s]`` is the behaviour token-mean entropy over the step's trainable
    tokens (``None`` when the batch carries no entropies).
    """

    traj_index: torch.Tensor  # [S] long, step -> trajectory
    turn: torch.Tensor  # [S] long, turn number within the trajectory
    returns: torch.Tensor  # [T] float, sum of the episode's rewards
    group_ids: Sequence[Any]  # [T] GRPO groups (whole groups on a rank)
    rewards: torch.Tensor  # [S] float, the env's reward for the step
    env_seconds: torch.Tensor  # [S] float, the env step's wall time
    trainable: torch.Tensor  # [S] bool, the step has at least one trainable token
    observations: Sequence[str]  # [S] the observation each step acted on
    entropy: torch.Tensor | None = None  # [S] float
    episode_rewards: Sequence[Sequence[float]] = ()  # [T] every turn's env reward, also turns that are not steps
    infos: Sequence[Mapping[str, Any]] = ()  # [S] the env info of each step (invalid_action, parse_error, ...)
    inclusion: torch.Tensor | None = None  # [T] float, P(the trajectory's group was used), from the batching


@dataclass
class Tokens:
    """One micro-batch as loss plug-ins see it: ``n`` steps x ``R`` response positions.

    ``aggregate(values)`` reduces a ``[n, R]`` token quantity the way the learner's policy loss is
    aggregated, already scaled so that summing over micro-batches gives the mini-batch value;
    ``nested_mean(values)`` is EPO's mean over trajectories of the mean over turns, likewise.
    """

    logp: torch.Tensor  # [n, R] current log-probs (with gradient)
    entropy: torch.Tensor  # [n, R] current entropies (with gradient)
    old_logp: torch.Tensor  # [n, R] proximal log-probs: the weights at the start of the update (= behaviour when fresh)
    advantages: torch.Tensor  # [n]
    mask: torch.Tensor  # [n, R] float, trained tokens
    eps_low: float
    eps_high: float
    aggregate: Callable[[torch.Tensor], torch.Tensor]
    nested_mean: Callable[[torch.Tensor], torch.Tensor]
    reference_logp: Callable[[], torch.Tensor]  # [n, R] under the frozen reference policy (computed on demand)
    generator: torch.Generator | None = None
    behaviour_weight: torch.Tensor | None = None  # [n, R] min(pi_prox / pi_behaviour, cap): 1 on fresh tokens
    steps: list[int] | None = None  # [n] the batch's step index of each row


class Plugin(abc.ABC):
    """Base of every plug-in: a ``Config`` dataclass of options, and optional state to checkpoint."""

    name: ClassVar[str]
    kind: ClassVar[str]

    @dataclass
    class Config:
        pass

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.Config()

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


class AdvantageEstimator(Plugin):
    kind = "advantage"
    needs_entropy: ClassVar[bool] = False  # Steps.entropy must be filled

    @abc.abstractmethod
    def __call__(self, steps: Steps, reduce: Reduce) -> torch.Tensor:
        """Per-step advantages ``[S]``."""


class AdvantageShaper(Plugin):
    kind = "shaping"
    needs_entropy: ClassVar[bool] = False  # Steps.entropy must be filled

    @abc.abstractmethod
    def __call__(self, steps: Steps, advantages: torch.Tensor, reduce: Reduce) -> torch.Tensor:
        """New per-step advantages ``[S]`` from ``advantages`` ``[S]``."""


class PolicyLoss(Plugin):
    """The per-token policy-gradient loss, against the proximal log-probs (``Tokens.old_logp``); the
    learner multiplies it by the behaviour importance weight, masks and aggregates it.

    ``needs_minibatch``: the loss selects tokens over the whole mini-batch (Clip-Cov, KL-Cov); the
    learner calls :meth:`prepare` with the mini-batch (no gradient) before its micro-batches, so the
    selection does not depend on how the mini-batch is split.
    """

    kind = "policy_loss"
    needs_minibatch: ClassVar[bool] = False

    def prepare(self, minibatch: Tokens) -> None:
        """See the class docstring; rows are identified by ``minibatch.steps``."""

    @abc.abstractmethod
    def __call__(self, tokens: Tokens) -> torch.Tensor:
        """Per-token loss ``[n, R]`` (the learner weights, masks and aggregates it)."""


class LossTerm(Plugin):
    """A scalar added to the loss. ``needs_reference``: the learner keeps a frozen reference policy."""

    kind = "term"
    needs_reference: ClassVar[bool] = False
    needs_schedule: ClassVar[bool] = False  # start_step must be given the run's total_steps

    def start_step(self, step: int, total_steps: int | None) -> None:
        """Called before each optimizer step (``step`` = optimizer steps done so far)."""

    @abc.abstractmethod
    def __call__(self, tokens: Tokens) -> tuple[torch.Tensor, dict[str, float]]:
        """This micro-batch's share of the term (already scaled) and metrics to sum over micro-batches."""

    def end_step(self, batch_entropy: float) -> dict[str, Any]:
        """Called after a successful optimizer step with the mini-batch token-mean entropy; returns metrics."""
        return {}


_REGISTRY: dict[tuple[str, str], type[Plugin]] = {}
_loaded = False


def register(cls: type[Plugin]) -> type[Plugin]:
    """Class decorator: make ``cls`` available under ``cls.name`` for its ``cls.kind``."""
    if cls.kind not in KINDS:
        raise ValueError(f"plug-in kind must be one of {KINDS}, got {cls.kind!r}")
    if not dataclasses.is_dataclass(cls.Config):
        raise TypeError(f"{cls.__name__}.Config must be a dataclass")
    _REGISTRY[(cls.kind, cls.name)] = cls
    return cls


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _BUILTIN_MODULES:
        importlib.import_module(f"agentrl.algorithms.{module}")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()()
        except Exception as exc:  # a broken plugin must not break agentrl for everyone else
            warnings.warn(f"agentrl: algorithm plugin {ep.name!r} ({ep.value}) failed to load: {exc}", stacklevel=2)


def names(kind: str) -> list[str]:
    """Registered plug-in names of one kind, sorted."""
    _load()
    return sorted(name for k, name in _REGISTRY if k == kind)


def get(kind: str, name: str) -> type[Plugin]:
    """The plug-in class registered as ``name`` for ``kind``; one-line error with the choices otherwise."""
    _load()
    if (kind, name) not in _REGISTRY:
        known = names(kind)
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise AlgorithmConfigError(f"unknown {kind} {name!r}; {hint}choose one of: {', '.join(known) or 'none'}")
    return _REGISTRY[(kind, name)]


def build(kind: str, name: str, options: dict[str, Any] | None = None, where: str = "") -> Plugin:
    """An instance of plug-in ``name`` with ``options`` checked against its ``Config`` (keys and types)."""
    import pydantic

    cls = get(kind, name)
    options = dict(options or {})
    fields = [f.name for f in dataclasses.fields(cls.Config)]
    for key in options:
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f"did you mean '{where}{close[0]}'?" if close else f"valid options: {', '.join(fields) or 'none'}"
            raise AlgorithmConfigError(f"unknown option '{where}{key}' of {kind} {name!r}; {hint}")
    try:
        config = pydantic.TypeAdapter(cls.Config).validate_python(options)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise AlgorithmConfigError(f"option '{where}{key}': {err['msg']} (got {err.get('input')!r})") from None
    return cls(config)
