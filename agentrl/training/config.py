"""The learner's typed configuration: one documented field per knob, grouped by algorithm."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal


@dataclass
class EMPGConfig:
    """Entropy-Modulated Policy Gradients (arXiv 2509.09265); defaults from the paper."""

    k: float = 1.0  # sharpness of the self-calibrating scale g = exp(-k H~)
    k_future: float = 1.0  # sharpness of the future-clarity term f = exp(-k' H~)
    zeta: float = 0.1  # weight of the future-clarity bonus


@dataclass
class EPOConfig:
    """Entropy-regularized Policy Optimization (arXiv 2509.22576); defaults from the paper (ALFWorld)."""

    lam: float = 1e-3  # lambda: weight of the entropy terms
    kappa_l: float = 0.0  # lower corridor bound, as a multiple of the reference entropy
    kappa_r: float = 2.0  # upper corridor bound, as a multiple of the reference entropy
    gamma: float = 3.0  # decay rate of beta_k
    alpha: float = 0.1  # penalty scale (0.05 for ScienceWorld)
    detach_penalty: bool = False  # True = the authors' code (penalty without gradient), False = the paper


@dataclass
class CovConfig:
    """Clip-Cov / KL-Cov token selection (arXiv 2505.22617); defaults from the paper (7B models)."""

    clip_ratio: float = 2e-4  # Clip-Cov: fraction of tokens whose gradient is dropped
    cov_low: float = 1.0  # Clip-Cov: lower covariance bound of the candidates
    cov_high: float = 5.0  # Clip-Cov: upper covariance bound of the candidates
    k_ratio: float = 2e-3  # KL-Cov: fraction of top-covariance tokens that get the KL penalty
    kl_coef: float = 1.0  # KL-Cov: weight of |log pi - log pi_old| on those tokens


@dataclass
class LoRAConfig:
    """Low-rank adapters (peft); the base weights stay frozen."""

    r: int = 16  # adapter rank
    alpha: int = 32  # scaling numerator (scale = alpha / r)
    dropout: float = 0.0  # dropout on the adapter input
    target_modules: str | list[str] = "all-linear"  # peft target spec; "all-linear" excludes the LM head


@dataclass
class LearnerConfig:
    """Everything the learner needs; recipes set these from their own configs."""

    lr: float = 1e-6  # peak AdamW learning rate
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas
    warmup_steps: int = 0  # linear warm-up from 0 to lr over this many optimizer steps
    total_steps: int = 1000  # optimizer steps of the whole run: the cosine horizon and EPO's K
    min_lr_ratio: float = 0.0  # the cosine decays to lr * min_lr_ratio
    max_grad_norm: float = 1.0  # clip the global gradient norm to this (0 = no clipping)
    layout: Literal["concat", "per_step"] = (
        "concat"  # concat: pack a trajectory's turns while each prompt extends the last
    )
    micro_batch_tokens: int = 8192  # padded tokens (rows x longest row) per forward/backward pass
    mini_batches: int = 1  # optimizer steps per update (the batch is split by trajectory)
    epochs: int = 1  # passes over the batch per update
    advantage: Literal["grpo", "dr_grpo"] = "grpo"  # trajectory advantage: GRPO (std-scaled) or Dr.GRPO
    adv_eps: float = 1e-6  # epsilon of the GRPO std division
    eps_low: float = 0.2  # PPO clip: ratio >= 1 - eps_low
    eps_high: float = 0.2  # PPO clip: ratio <= 1 + eps_high (DAPO uses 0.28)
    agg: Literal["token-mean", "seq-mean-token-mean"] = "token-mean"  # loss aggregation
    policy_loss: Literal["clip", "clip_cov", "kl_cov"] = "clip"  # PPO-clip, or a covariance variant
    cov: CovConfig = field(default_factory=CovConfig)  # Clip-Cov / KL-Cov settings
    temperature: float = 1.0  # sampling temperature of the behaviour policy (logits are divided by it)
    kl_coef: float = 0.0  # weight of the k3 KL to the frozen initial policy (0 = no reference model)
    duration_weighting: bool = False  # weight advantages by env_seconds / batch mean (arXiv 2509.01684)
    empg: EMPGConfig | None = None  # EMPG advantage modulation when set
    epo: EPOConfig | None = None  # EPO entropy terms when set
    lora: LoRAConfig | None = None  # train LoRA adapters instead of all weights when set
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU
    gradient_checkpointing: bool = False  # recompute activations in backward (saves memory)
    seed: int = 0  # seeds the learner's own generator (mini-batch shuffling)
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes saved with checkpoints

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field whose value cannot work."""
        checks = [
            ("lr", self.lr > 0),
            ("weight_decay", self.weight_decay >= 0),
            ("warmup_steps", self.warmup_steps >= 0),
            ("total_steps", self.total_steps >= 1),
            ("min_lr_ratio", 0 <= self.min_lr_ratio <= 1),
            ("max_grad_norm", self.max_grad_norm >= 0),
            ("layout", self.layout in ("concat", "per_step")),
            ("micro_batch_tokens", self.micro_batch_tokens >= 1),
            ("mini_batches", self.mini_batches >= 1),
            ("epochs", self.epochs >= 1),
            ("advantage", self.advantage in ("grpo", "dr_grpo")),
            ("eps_low", 0 <= self.eps_low < 1),
            ("eps_high", self.eps_high >= 0),
            ("agg", self.agg in ("token-mean", "seq-mean-token-mean")),
            ("policy_loss", self.policy_loss in ("clip", "clip_cov", "kl_cov")),
            ("temperature", self.temperature > 0),
            ("kl_coef", self.kl_coef >= 0),
            ("precision", self.precision in ("auto", "fp32", "bf16")),
        ]
        for name, ok in checks:
            if not ok:
                raise ValueError(f"learner config: invalid {name}={getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LearnerConfig:
        """Inverse of :meth:`to_dict` (nested algorithm configs included)."""
        data = dict(data)
        for key, sub in (("empg", EMPGConfig), ("epo", EPOConfig), ("lora", LoRAConfig), ("cov", CovConfig)):
            if isinstance(data.get(key), dict):
                data[key] = sub(**data[key])
        if "betas" in data:
            data["betas"] = tuple(data["betas"])
        return cls(**data)
