"""The rollout engine of a run: which backend generates, and how its weights follow the learner's.

Every recipe has a ``rollout`` section (:class:`RolloutConfig`, ``rollout.backend=hf|vllm|openai``):

* ``hf``: :class:`~agentrl.policies.hf.HFPolicy` in this process on the very model object the learner
  trains (LoRA layers included), so an update needs no copy;
* ``vllm``: :class:`~agentrl.policies.vllm.VLLMPolicy` in this process, beside a transformers copy the
  learner trains; with ``rollout.sleep`` (one GPU for both) the engine sleeps while the learner updates;
* ``openai``: :class:`~agentrl.policies.openai.OpenAIPolicy` (token-exact, with the model's tokenizer)
  against a server at ``rollout.url``: ``vllm serve`` with agentrl's worker extension, or
  ``agentrl serve --weights-dir``; the learner trains a transformers copy here.

After every update :meth:`RolloutEngine.sync` makes the engine run the learner's new version: for
``vllm`` and ``openai`` it publishes the weights (:mod:`agentrl.distributed.weights`: safetensors, full
weights or only the LoRA adapters) under the run's weights directory and tells the engine to load that
directory (:meth:`load_published`; the protocol is in :mod:`agentrl.policies.weight_routes`). A server
must read the same filesystem. The recipe then compares the engine's behaviour log-probs with the
learner's (:func:`agentrl.training.exactness.check_behaviour_logprobs`) on the next batch.

A misconfiguration (an unknown backend, ``openai`` without a URL, settings of one backend given to
another, vLLM missing, a server without weight-update routes) is one :class:`~agentrl.config.ConfigError`
or :class:`~agentrl.policies.base.PolicyError` line before any episode is played.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from agentrl.config import ConfigError, setting

BACKENDS = ("hf", "vllm", "openai")


@dataclass
class RolloutConfig:
    """Which engine generates the rollouts and how closely it is checked against the learner (``rollout.*``)."""

    backend: Literal["hf", "vllm", "openai"] = setting(
        "hf", "hf: transformers here, sharing the learner's model; vllm: a vLLM engine here; openai: a server at url"
    )
    url: str = setting("", "openai: the server's base URL (http://HOST:PORT); it must read the run's weights directory")
    api_key: str | None = setting(None, "openai: bearer token of the server")
    served_model: str | None = setting(None, "openai: the model name the server serves (default: its first)")
    sleep: bool = setting(True, "vllm: sleep the engine while the learner updates (engine and learner share one GPU)")
    engine_args: dict[str, Any] = setting(factory=dict, doc="vllm: more vllm.LLM arguments (gpu_memory_utilization, dtype, ...)")
    keep_versions: int = setting(2, "vllm/openai: published weight versions kept on disk")
    check_every: int = setting(1, "compare the engine's behaviour log-probs with the learner's every N iterations (0 = never)")
    check_tokens: int = setting(512, "sampled tokens compared per check")
    tolerance: float = setting(0.1, "largest |logp_engine - logp_learner| accepted (fp32 agrees to ~1e-5, bf16 to a few 1e-2)")
    on_mismatch: Literal["warn", "raise"] = setting("warn", "past the tolerance: log a warning, or stop the run")

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first setting that cannot work with the chosen backend."""
        if self.backend not in BACKENDS:
            raise ConfigError(f"rollout.backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.backend == "openai" and not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"rollout.backend=openai needs rollout.url=http://HOST:PORT (the server), got {self.url!r}")
        for name, used_by in (("url", "openai"), ("api_key", "openai"), ("served_model", "openai"), ("engine_args", "vllm")):
            if getattr(self, name) and self.backend != used_by:
                raise ConfigError(f"rollout.{name} is only used with rollout.backend={used_by}, not {self.backend}")
        if self.keep_versions < 1 or self.check_every < 0 or self.check_tokens < 1 or self.tolerance < 0:
            raise ConfigError("rollout: keep_versions and check_tokens must be >= 1, check_every and tolerance >= 0")
        if self.on_mismatch not in ("warn", "raise"):
            raise ConfigError(f"rollout.on_mismatch must be warn or raise, got {self.on_mismatch!r}")


class RolloutEngine:
    """A run's rollout policy (``policy``, ``tokenizer``) and the model the learner trains (``train_model``)."""

    def __init__(self, config: RolloutConfig, policy: Any, tokenizer: Any, train_model: Any, weights_dir: Path | None):
        from agentrl.distributed.weights import WeightPublisher

        self.config = config
        self.backend = config.backend
        self.policy = policy
        self.tokenizer = tokenizer
        self.train_model = train_model
        self.publisher = WeightPublisher(weights_dir, keep=config.keep_versions) if weights_dir is not None else None

    @property
    def pad_id(self) -> int:
        """The id the learner pads sequences with: the tokenizer's pad token, else its end-of-sequence token."""
        for candidate in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id):
            if candidate is not None:
                return int(candidate)
        return 0

    def reseed(self, seed: int) -> None:
        """Restart the sampling generator from ``seed`` before a phase (an iteration's rollouts, an evaluation).

        ``hf`` restarts its generator, so a resumed run samples exactly what the uninterrupted one did
        (:func:`agentrl.training.run.phase_seed`). ``vllm`` and ``openai`` draw from the engine's own
        running generator, which no restart restores: a resumed run there continues with fresh samples.
        """
        if self.backend == "hf":
            self.policy.reseed(seed)

    def sleep(self) -> None:
        """Before the learner's update: a colocated vLLM engine frees the GPU (a no-op for the other backends)."""
        if self.backend == "vllm" and self.config.sleep:
            self.policy.sleep()

    def sync(self, learner: Any) -> dict[str, float]:
        """Make the engine run ``learner``'s current weights as version ``learner.step``; returns timing metrics.

        ``hf`` shares the learner's model, so only the version number moves. The others publish the
        weights and load the published directory (a vLLM engine asleep is woken first).
        """
        if self.publisher is None:
            self.policy.version = learner.step
            return {}
        from agentrl.distributed.weights import publish_weights

        started = time.perf_counter()
        path = publish_weights(self.publisher, learner)
        published = time.perf_counter()
        if self.backend == "vllm":
            self.policy.wake_up()
        self.policy.load_published(path, learner.step)
        done = time.perf_counter()
        return {"rollout/publish_seconds": published - started, "rollout/load_seconds": done - published}

    def close(self) -> None:
        close = getattr(self.policy, "close", None)
        if close is not None:
            close()


def build_rollout_engine(
    config: RolloutConfig,
    model: str,
    *,
    weights_dir: str | os.PathLike[str] | None,
    seed: int = 0,
    revision: str | None = None,
    lora_rank: int | None = None,
    device: str | None = None,
) -> RolloutEngine:
    """The engine ``config`` asks for, on ``model`` (a model directory or Hub id).

    ``weights_dir`` is where versions are published for ``vllm`` and ``openai`` (a server must see the
    same path); ``lora_rank`` is the learner's LoRA rank when it trains adapters (vLLM must be built for
    them); ``device`` places the learner's copy (default: CUDA when available).
    """
    config.validate()
    if config.backend == "hf":
        from agentrl.policies.hf import HFPolicy

        policy = HFPolicy(model, seed=seed, revision=revision, device=device)
        return RolloutEngine(config, policy, policy.tokenizer, policy.model, None)
    if weights_dir is None:
        raise ConfigError(f"rollout.backend={config.backend} needs a weights directory to publish versions in")
    import torch

    from agentrl.policies.hf import load_model_and_tokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    weights_dir = Path(weights_dir).resolve()
    if config.backend == "vllm":
        from agentrl.policies.vllm import VLLMPolicy

        policy = VLLMPolicy(model, seed=seed, revision=revision, sleep_mode=config.sleep, enable_lora=lora_rank is not None,
                            max_lora_rank=lora_rank or 16, **config.engine_args)  # fmt: skip
        train_model, tokenizer = load_model_and_tokenizer(model, device=device, revision=revision)
    else:
        from agentrl.policies.openai import OpenAIPolicy

        train_model, tokenizer = load_model_and_tokenizer(model, device=device, revision=revision)
        policy = OpenAIPolicy(config.url, config.served_model, api_key=config.api_key, mode="completions")
    return RolloutEngine(config, policy, tokenizer, train_model, weights_dir)
