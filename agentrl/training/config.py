"""The learner's typed configuration: one documented field per knob.

Algorithms are plug-ins chosen by name (:mod:`agentrl.algorithms.registry`); their options live in
``options`` under the plug-in's name and are checked against the plug-in's own ``Config`` when the
learner is built, so adding an algorithm never touches this file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from agentrl.config import setting


@dataclass
class LoRAConfig:
    """Low-rank adapters (peft); the base weights stay frozen."""

    r: int = setting(16, "adapter rank")
    alpha: int = setting(32, "scaling numerator (scale = alpha / r)")
    dropout: float = setting(0.0, "dropout on the adapter input")
    target_modules: str | list[str] = setting("all-linear", 'peft target spec; "all-linear" excludes the LM head')


@dataclass
class LearnerConfig:
    """Everything the learner needs; recipes set these from their own configs."""

    lr: float = setting(1e-6, "peak AdamW learning rate")
    weight_decay: float = setting(0.0, "AdamW decoupled weight decay")
    betas: tuple[float, float] = setting((0.9, 0.999), "AdamW betas")
    warmup_steps: int = setting(0, "linear warm-up from 0 to lr over this many optimizer steps")
    total_steps: int | None = setting(
        None, "optimizer steps of the run: the cosine horizon and EPO's K (recipes derive it; None = constant lr)"
    )
    min_lr_ratio: float = setting(0.0, "the cosine decays to lr * min_lr_ratio")
    max_grad_norm: float = setting(1.0, "clip the global gradient norm to this (0 = no clipping)")
    micro_batch_tokens: int = setting(8192, "padded tokens (sequences x longest sequence) per forward/backward pass")
    mini_batches: int = setting(1, "optimizer steps per update (the batch is split by trajectory)")
    epochs: int = setting(1, "passes over the batch per update")
    advantage: str = setting("grpo", "advantage estimator plug-in: grpo, dr_grpo, gigpo, ...")
    shaping: list[str] = setting(factory=list, doc="advantage shaper plug-ins, applied in order: empg, duration")
    policy_loss: str = setting("clip", "policy-loss plug-in: clip (PPO-clip), clip_cov, kl_cov")
    terms: list[str] = setting(factory=list, doc="loss-term plug-ins: kl (to the initial policy), epo, entropy")
    options: dict[str, dict[str, Any]] = setting(factory=dict, doc='plug-in options by name: {"empg": {"k": 2.0}}')
    eps_low: float = setting(0.2, "PPO clip: ratio >= 1 - eps_low")
    eps_high: float = setting(0.2, "PPO clip: ratio <= 1 + eps_high (DAPO uses 0.28)")
    importance_cap: float = setting(
        5.0, "stale data: cap of the behaviour weight pi_prox / pi_behaviour (decoupled PPO)"
    )
    agg: Literal["token-mean", "seq-mean-token-mean"] = setting("token-mean", "loss aggregation")
    lora: LoRAConfig | None = setting(None, "train LoRA adapters instead of all weights when set")
    precision: Literal["auto", "fp32", "bf16"] = setting("auto", "auto = bf16 autocast on CUDA, fp32 on CPU")
    gradient_checkpointing: bool = setting(False, "recompute activations in backward (saves memory)")
    seed: int = setting(0, "seeds the learner's own generator (mini-batch shuffling)")
    extra: dict[str, Any] = setting(factory=dict, doc="free-form notes saved with checkpoints")

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field whose value cannot work."""
        checks = [
            ("lr", self.lr > 0),
            ("weight_decay", self.weight_decay >= 0),
            ("warmup_steps", self.warmup_steps >= 0),
            ("total_steps", self.total_steps is None or self.total_steps >= 1),
            ("min_lr_ratio", 0 <= self.min_lr_ratio <= 1),
            ("max_grad_norm", self.max_grad_norm >= 0),
            ("micro_batch_tokens", self.micro_batch_tokens >= 1),
            ("mini_batches", self.mini_batches >= 1),
            ("epochs", self.epochs >= 1),
            ("eps_low", 0 <= self.eps_low < 1),
            ("eps_high", self.eps_high >= 0),
            ("agg", self.agg in ("token-mean", "seq-mean-token-mean")),
            ("importance_cap", self.importance_cap >= 1),
            ("precision", self.precision in ("auto", "fp32", "bf16")),
        ]
        for name, ok in checks:
            if not ok:
                raise ValueError(f"learner config: invalid {name}={getattr(self, name)!r}")

    @property
    def steps_per_update(self) -> int:
        """Optimizer steps one :meth:`~agentrl.training.learner.Learner.update` takes (epochs x mini-batches)."""
        return self.epochs * self.mini_batches

    def for_run(self, updates: int) -> LearnerConfig:
        """This config with ``total_steps`` derived from a run of ``updates`` learner updates, unless set.

        The schedule's length must follow the run: a cosine that ends before the run does trains the
        rest at ``lr * min_lr_ratio`` (0 by default), one that ends after it never decays fully.
        """
        if self.total_steps is not None:
            return self
        return replace(self, total_steps=max(1, updates * self.steps_per_update))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LearnerConfig:
        """Inverse of :meth:`to_dict` (nested algorithm configs included)."""
        data = dict(data)
        if isinstance(data.get("lora"), dict):
            data["lora"] = LoRAConfig(**data["lora"])
        if "betas" in data:
            data["betas"] = tuple(data["betas"])
        return cls(**data)


def plugin_option_sections(config: Any) -> dict[str, tuple[type, dict[str, Any]]]:
    """The options of the algorithm plug-ins a :class:`LearnerConfig` selects, as ``options.NAME`` sections.

    For :func:`agentrl.config.describe` (``--show-config``): each plug-in in use with options gets its
    ``Config`` dataclass and the values ``options[NAME]`` sets. Other configs have none.
    """
    if not isinstance(config, LearnerConfig):
        return {}
    import dataclasses

    from agentrl.algorithms import registry

    used = [("advantage", config.advantage), *(("shaping", name) for name in config.shaping),
            ("policy_loss", config.policy_loss), *(("term", name) for name in config.terms)]  # fmt: skip
    sections: dict[str, tuple[type, dict[str, Any]]] = {}
    for kind, name in used:
        options = registry.get(kind, name).Config
        if dataclasses.fields(options):
            sections[f"options.{name}"] = (options, dict(config.options.get(name) or {}))
    return sections
