"""The learner: a batch of episodes in, one or more policy updates out. It trains the distribution that acted.

One update (:meth:`Learner.update`) does, in order:

1. the batch: every episode's transcripts as training sequences, verbatim, and one step per agent
   turn with sampled ids (:mod:`agentrl.training.batch`), each sequence with the sampling
   temperature its tokens were drawn at (recorded with the data: there is no learner copy of it);
2. the proximal policy: the log-probs of the weights at the start of this update, for stale tokens
   (sampled by an older policy version); for fresh tokens it *is* the behaviour policy;
3. advantages: the configured estimator plug-in (GRPO, Dr.GRPO, ...) over returns and groups, then
   each shaper plug-in in order (EMPG, duration weights, ...; :mod:`agentrl.algorithms.registry`);
4. for each optimizer step, micro-batches of sequences with gradient accumulation: log-probs and
   entropies under the current policy (:func:`token_logprobs_entropy`; under constrained decoding
   those of ``q``, the distribution restricted to the allowed ids), the policy-loss plug-in's token
   loss (PPO-clip, Clip-Cov, KL-Cov), plus each loss-term plug-in (k3 KL to the frozen initial
   policy, EPO's entropy terms); then gradient-norm clipping, AdamW and the warm-up/cosine schedule.

Off-policy correction is decoupled PPO (Hilton et al. 2021, "Batch size-invariance for policy
optimization"; AReaL): ``ratio = pi_theta / pi_prox`` is clipped to ``[1 - eps_low, 1 + eps_high]``
around the proximal policy, and each token's loss is multiplied by the behaviour importance weight
``w = min(pi_prox / pi_behaviour, importance_cap)`` (truncated, no gradient). On fresh data
``pi_prox`` is the behaviour policy exactly, ``w = 1`` and the loss is plain PPO-clip against the
stored behaviour log-probs. Steps stored without behaviour log-probs get the current policy's
(computed without gradient before the update: ratio 1 at the first step). Shapers that need
entropies use the stored behaviour entropies, or the current policy's when missing.

Loss parts are scaled per micro-batch so that their sum is exactly the full-batch value
(token-mean: ``tokens_mb / tokens_batch``; seq-mean: ``steps_mb / steps_batch``; nested means: the
whole mini-batch's turn weights). Policy losses that select tokens over the whole mini-batch
(Clip-Cov, KL-Cov) see it once before its micro-batches, so the loss does not depend on how it is
split. A non-finite loss or gradient norm skips the optimizer step with a logged warning.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from agentrl.algorithms import epo, ppo, registry
from agentrl.algorithms._common import row_mean
from agentrl.algorithms.registry import Plugin, Reduce, Steps, Tokens
from agentrl.training.batch import StepBatch, build_batch, collate, micro_batches
from agentrl.training.config import LearnerConfig
from agentrl.training.logprobs import token_logprobs_entropy
from agentrl.training.metrics import MetricsLogger
from agentrl.training.optim import build_optimizer
from agentrl.trajectory import Episode

log = logging.getLogger("agentrl.training")

CHECKPOINT_FILE = "learner.pt"


def _apply_lora(model: nn.Module, lora) -> nn.Module:
    import peft

    spec = peft.LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules
    )
    return peft.get_peft_model(model, spec)


def build_plugins(config: LearnerConfig) -> dict[str, Any]:
    """The configured algorithm plug-ins, options checked: ``advantage``, ``shaping``, ``policy_loss``, ``terms``."""
    options = dict(config.options)

    def build(kind: str, name: str) -> Plugin:
        return registry.build(kind, name, options.pop(name, None), where=f"learner.options.{name}.")

    plugins = {
        "advantage": build("advantage", config.advantage),
        "shaping": [build("shaping", name) for name in config.shaping],
        "policy_loss": build("policy_loss", config.policy_loss),
        "terms": [build("term", name) for name in config.terms],
    }
    if options:
        name = next(iter(options))
        raise registry.AlgorithmConfigError(
            f"learner.options.{name} is set but {name!r} is not in use (advantage, shaping, policy_loss or terms)"
        )
    return plugins


class Learner:
    """Trains a Hugging Face causal LM on episodes; ``step`` counts optimizer steps (= policy version).

    Build it from the *initial* policy (also when resuming: the KL reference is a frozen copy of the
    model given here, or the base model with adapters off under LoRA), then :meth:`load_checkpoint`.
    ``reduce`` takes whole-batch statistics across the ranks of a data-parallel learner.
    """

    def __init__(
        self,
        model: nn.Module,
        config: LearnerConfig | None = None,
        *,
        pad_token_id: int = 0,
        logger: MetricsLogger | None = None,
        device: torch.device | str | None = None,
        reduce: Reduce | None = None,
    ) -> None:
        self.config = cfg = config or LearnerConfig()
        cfg.validate()
        plugins = build_plugins(cfg)
        self.advantage, self.shapers = plugins["advantage"], plugins["shaping"]
        self.policy_loss, self.terms = plugins["policy_loss"], plugins["terms"]
        for term in self.terms:
            if term.needs_schedule and cfg.total_steps is None:
                raise registry.AlgorithmConfigError(
                    f"{term.name} needs the run's length: set learner.total_steps (recipes derive it from their iterations)"
                )
        self.reduce = reduce or Reduce()
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        if cfg.lora is not None:
            model = _apply_lora(model, cfg.lora)
        if cfg.gradient_checkpointing:
            enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5 name
            (enable or model.gradient_checkpointing_enable)()
            if cfg.lora is not None:
                model.enable_input_require_grads()
        self.model = model.to(self.device)
        self.reference: nn.Module | None = None
        if any(term.needs_reference for term in self.terms) and cfg.lora is None:
            self.reference = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer, self.scheduler = build_optimizer(
            self.params,
            cfg.lr,
            cfg.weight_decay,
            cfg.betas,
            cfg.warmup_steps,
            cfg.total_steps,
            cfg.min_lr_ratio,
        )
        self.pad_token_id = pad_token_id
        self.logger = logger
        self.step = 0
        self.skipped_steps = 0
        self._warned_past_schedule = False
        self._proximal: list[list[float]] = []
        self.generator = torch.Generator().manual_seed(cfg.seed)

    def _plugins(self) -> dict[str, Plugin]:
        """Every plug-in by ``kind:name`` (the checkpoint's keys for their state)."""
        every = [self.advantage, *self.shapers, self.policy_loss, *self.terms]
        return {f"{p.kind}:{p.name}": p for p in every}

    # ------------------------------------------------------------------ precision and scoring

    def _autocast(self):
        precision = self.config.precision
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        if precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _score(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logprob, entropy)`` ``[B, L]`` of the sampled tokens under ``model``, at each sequence's
        sampling temperature, over the allowed sets where decoding was constrained."""
        with self._autocast():
            return token_logprobs_entropy(
                model, batch["input_ids"], batch["attention_mask"], batch["targets"], batch["temperature"],
                allowed=batch["allowed"],
            )  # fmt: skip

    @torch.no_grad()
    def _reference_logp(self, batch: dict[str, Any]) -> torch.Tensor:
        if self.reference is not None:
            return self._score(self.reference, batch)[0]
        with self.model.disable_adapter():  # LoRA: the base model is the reference
            return self._score(self.model, batch)[0]

    @torch.no_grad()
    def score_steps(self, batch: StepBatch, steps: set[int]) -> dict[int, tuple[list[float], list[float]]]:
        """``step -> (logprobs, entropies)`` of its response under the current weights (no gradient)."""
        seqs = sorted({batch.step_seq[i] for i in steps})
        steps_of = batch.seq_steps()
        out: dict[int, tuple[list[float], list[float]]] = {}
        for mb in micro_batches(batch.seq_lengths(), seqs, self.config.micro_batch_tokens):
            tensors = collate(batch, mb, self.pad_token_id, self.device, steps_of)
            logp, ent = self._score(self.model, tensors)
            seq, pos = tensors["step_seq"], tensors["step_pos"]
            logp, ent = logp[seq, pos], ent[seq, pos]  # [n, R]
            for k, i in enumerate(tensors["steps"]):
                n = len(batch.response_ids[i])
                out[i] = (logp[k, :n].tolist(), ent[k, :n].tolist())
        return out

    def _prepare(self, batch: StepBatch) -> dict[str, Any]:
        """Fill missing behaviour statistics and compute the proximal log-probs (the weights at the start
        of this update) for stale steps; returns batch statistics for the metrics."""
        entropy_needed = any(p.needs_entropy for p in (self.advantage, *self.shapers))
        missing = {i for i in range(batch.n_steps) if batch.behaviour_logprobs[i] is None}
        missing |= {i for i in range(batch.n_steps) if entropy_needed and batch.behaviour_entropies[i] is None}
        stale = {
            i for i in range(batch.n_steps)
            if batch.behaviour_logprobs[i] is not None and any(v != self.step for v, m in zip(batch.versions[i], batch.loss_masks[i], strict=True) if m)
        }  # fmt: skip
        scores = self.score_steps(batch, missing | stale) if missing | stale else {}
        for i in missing:
            if batch.behaviour_logprobs[i] is None:
                batch.behaviour_logprobs[i] = scores[i][0]
            if batch.behaviour_entropies[i] is None:
                batch.behaviour_entropies[i] = scores[i][1]
        # Fresh steps: the proximal policy is the behaviour policy itself (the same list, exactly).
        self._proximal = [scores[i][0] if i in stale else batch.behaviour_logprobs[i] for i in range(batch.n_steps)]
        return {"stale_steps": len(stale)}

    # ------------------------------------------------------------------ advantages

    def steps_view(self, batch: StepBatch) -> Steps:
        """The batch as advantage plug-ins see it (:class:`~agentrl.algorithms.registry.Steps`)."""
        entropy = None
        if all(h is not None for h in batch.behaviour_entropies):
            entropy = torch.tensor(
                [_masked_list_mean(h, m) for h, m in zip(batch.behaviour_entropies, batch.loss_masks, strict=True)]
            )  # [S] token-mean over trainable tokens
        return Steps(
            traj_index=batch.traj_index,
            turn=torch.tensor(batch.turn, dtype=torch.long),
            returns=batch.returns,
            group_ids=batch.group_ids,
            rewards=torch.tensor(batch.rewards, dtype=torch.float32),
            env_seconds=torch.tensor(batch.env_seconds, dtype=torch.float64),
            trainable=torch.tensor([t > 0 for t in batch.step_tokens()], dtype=torch.bool),
            observations=batch.observations,
            entropy=entropy,
            episode_rewards=batch.episode_rewards,
            infos=batch.infos,
            inclusion=None if any(p is None for p in batch.inclusion) else torch.tensor(batch.inclusion, dtype=torch.float64),
        )

    def advantages(self, batch: StepBatch) -> torch.Tensor:
        """Per-step advantages ``[S]``: the estimator, then each shaper in order."""
        steps = self.steps_view(batch)
        adv = self.advantage(steps, self.reduce)
        for shaper in self.shapers:
            adv = shaper(steps, adv, self.reduce)
        return adv

    # ------------------------------------------------------------------ update

    def update(self, episodes: list[Episode]) -> list[dict[str, Any]]:
        """Train on ``episodes``; returns (and logs) one metrics dict per optimizer step attempted."""
        was_training = self.model.training
        self.model.train()  # the model may be shared with a policy that generates in eval mode
        try:
            return self._update(episodes)
        finally:
            self.model.train(was_training)

    def _update(self, episodes: list[Episode]) -> list[dict[str, Any]]:
        cfg = self.config
        started = time.perf_counter()
        batch = build_batch(episodes)
        prepared = self._prepare(batch)
        step_adv = self.advantages(batch)
        batch_stats = {
            **prepared,
            "episodes": batch.n_trajectories,
            "dropped_episodes": batch.dropped_episodes,
            "return_mean": batch.returns.mean().item(),
            "success_rate": sum(batch.won) / batch.n_trajectories,
            "adv_mean": step_adv.mean().item(),
            "adv_std": step_adv.std().item() if step_adv.numel() > 1 else 0.0,
            "adv_min": step_adv.min().item(),
            "adv_max": step_adv.max().item(),
        }
        results = []
        for _ in range(cfg.epochs):
            for seqs in self._split(batch):
                metrics = self._optimizer_step(batch, seqs, step_adv)
                metrics.update(batch_stats)
                metrics["seconds"] = time.perf_counter() - started
                metrics["tokens_per_s"] = metrics["total_tokens"] / max(metrics["seconds"], 1e-9)
                started = time.perf_counter()
                if self.logger is not None:
                    self.logger.log(self.step, metrics)
                results.append(metrics)
        return results

    def _split(self, batch: StepBatch) -> list[list[int]]:
        """Sequence indices of each mini-batch: whole trajectories, shuffled by the learner's generator."""
        n = self.config.mini_batches
        if n <= 1:
            return [list(range(len(batch.sequences)))]
        order = torch.randperm(batch.n_trajectories, generator=self.generator).tolist()
        rank = {t: k * n // len(order) for k, t in enumerate(order)}
        splits: list[list[int]] = [[] for _ in range(n)]
        for q, t in enumerate(batch.seq_traj):
            splits[rank[t]].append(q)
        return [s for s in splits if s]

    def _tokens(self, tensors: dict[str, Any], adv: torch.Tensor, scale: float, turn_w: torch.Tensor, logp, ent) -> Tokens:
        """The loss plug-ins' view of a micro-batch: current, proximal and behaviour statistics ``[n, R]``."""
        cfg = self.config
        seq, pos, mask = tensors["step_seq"], tensors["step_pos"], tensors["mask"]
        steps = tensors["steps"]
        proximal = torch.zeros_like(mask)
        for k, i in enumerate(steps):
            proximal[k, : len(self._proximal[i])] = torch.tensor(self._proximal[i], dtype=torch.float32)
        weight = torch.exp(proximal - tensors["old_logp"]).clamp(max=cfg.importance_cap)  # [n, R], 1 on fresh tokens
        return Tokens(
            logp=logp, entropy=ent, old_logp=proximal, advantages=adv, mask=mask, eps_low=cfg.eps_low,
            eps_high=cfg.eps_high, aggregate=lambda values: ppo.aggregate(values, mask, cfg.agg) * scale,
            nested_mean=lambda values: epo.weighted_turn_mean(values, mask, turn_w),
            reference_logp=lambda: self._reference_logp(tensors)[seq, pos], generator=self.generator,
            behaviour_weight=weight, steps=steps,
        )  # fmt: skip

    @torch.no_grad()
    def _minibatch_view(
        self, batch: StepBatch, micro: list[list[int]], steps_of: list[list[int]], step_adv: torch.Tensor,
        weights: dict[int, float],
    ) -> Tokens:
        """The whole mini-batch as one :class:`Tokens` (no gradient), for plug-ins that select over it."""
        parts: list[Tokens] = []
        for mb in micro:
            tensors = collate(batch, mb, self.pad_token_id, self.device, steps_of)
            logp, ent = self._score(self.model, tensors)
            seq, pos = tensors["step_seq"], tensors["step_pos"]
            turn_w = torch.tensor([weights[i] for i in tensors["steps"]], device=self.device)
            parts.append(self._tokens(tensors, step_adv[tensors["steps"]].to(self.device), 1.0, turn_w, logp[seq, pos], ent[seq, pos]))
        width = max(t.mask.shape[1] for t in parts)

        def cat(name: str) -> torch.Tensor:
            return torch.cat([torch.nn.functional.pad(getattr(t, name), (0, width - t.mask.shape[1])) for t in parts])

        mask = cat("mask")
        return Tokens(
            logp=cat("logp"), entropy=cat("entropy"), old_logp=cat("old_logp"),
            advantages=torch.cat([t.advantages for t in parts]), mask=mask, eps_low=self.config.eps_low,
            eps_high=self.config.eps_high, aggregate=lambda values: ppo.aggregate(values, mask, self.config.agg),
            nested_mean=lambda values: values.new_zeros(()), reference_logp=lambda: mask.new_zeros(mask.shape),
            generator=self.generator, behaviour_weight=cat("behaviour_weight"), steps=[i for t in parts for i in t.steps],
        )  # fmt: skip

    def _micro_batch_loss(
        self, tensors: dict[str, Any], adv: torch.Tensor, scale: float, turn_w: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """This micro-batch's share of the step loss (``scale``/``turn_w`` come from the whole mini-batch)."""
        cfg = self.config
        seq, pos = tensors["step_seq"], tensors["step_pos"]  # [n, 1], [n, R]
        logp_seq, ent_seq = self._score(self.model, tensors)  # [B, L] per sequence
        logp, ent = logp_seq[seq, pos], ent_seq[seq, pos]  # [n, R] per step
        tokens = self._tokens(tensors, adv, scale, turn_w, logp, ent)
        mask, old_logp = tokens.mask, tokens.old_logp
        pg_loss = tokens.aggregate(tokens.behaviour_weight * self.policy_loss(tokens))
        loss = pg_loss
        parts: dict[str, float] = {}
        for term in self.terms:
            value, term_metrics = term(tokens)
            loss = loss + value
            parts.update(term_metrics)
        with torch.no_grad():
            n_tok = mask.sum().item()
            clip_frac = ppo.clip_fraction(logp, old_logp, adv, mask, cfg.eps_low, cfg.eps_high).item()
            parts.update(
                loss=loss.item(),
                pg_loss=pg_loss.item(),
                entropy_sum=(ent * mask).sum().item(),
                clip_sum=clip_frac * n_tok,
                approx_kl_sum=((old_logp - logp) * mask).sum().item(),
                behaviour_weight_sum=(tokens.behaviour_weight * mask).sum().item(),
                total_tokens=tensors["attention_mask"].sum().item(),
            )
        return loss, parts

    def _optimizer_step(self, batch: StepBatch, seqs: list[int], step_adv: torch.Tensor) -> dict[str, Any]:
        cfg = self.config
        steps_of = batch.seq_steps()
        indices = [i for q in seqs for i in steps_of[q]]  # the mini-batch's steps
        tokens = batch.step_tokens()
        total_tokens = sum(tokens[i] for i in indices)
        total_rows = sum(1 for i in indices if tokens[i] > 0)
        has_tokens = torch.tensor([[tokens[i] > 0] for i in indices])
        weights = dict(
            zip(indices, epo.turn_weights(has_tokens, batch.traj_index[indices]).tolist(), strict=True)
        )
        for term in self.terms:
            term.start_step(self.step, cfg.total_steps)
        sums: dict[str, float] = defaultdict(float)
        self.optimizer.zero_grad(set_to_none=True)
        finite = total_tokens > 0
        lengths = batch.seq_lengths()
        seq_lengths = [lengths[q] for q in seqs]
        micro = [[seqs[j] for j in mb] for mb in micro_batches(seq_lengths, range(len(seqs)), cfg.micro_batch_tokens)]
        if finite and self.policy_loss.needs_minibatch:  # token selection over the whole mini-batch, once
            self.policy_loss.prepare(self._minibatch_view(batch, micro, steps_of, step_adv, weights))
        for mb in micro if finite else []:
            tensors = collate(batch, mb, self.pad_token_id, self.device, steps_of)
            steps = tensors["steps"]
            n_rows = sum(1 for i in steps if tokens[i] > 0)
            scale = (
                sum(tokens[i] for i in steps) / total_tokens
                if cfg.agg == "token-mean"
                else n_rows / total_rows
            )
            turn_w = torch.tensor([weights[i] for i in steps], device=self.device)
            loss, parts = self._micro_batch_loss(tensors, step_adv[steps].to(self.device), scale, turn_w)
            if not torch.isfinite(loss):
                finite = False
                break
            loss.backward()
            for key, value in parts.items():
                sums[key] += value
        grad_norm = float("nan")
        if finite:
            max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm).item()
            finite = math.isfinite(grad_norm)
        metrics: dict[str, Any] = {
            "lr": self.scheduler.get_last_lr()[0],
            "rows": len(indices),
            "sequences": len(seqs),
        }
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            reason = "no trained tokens" if total_tokens == 0 else "non-finite loss or gradient"
            log.warning("skipping update at step %d: %s; weights left unchanged", self.step, reason)
            metrics.update(skipped=True, skipped_total=self.skipped_steps, total_tokens=sums["total_tokens"])
            return metrics
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        if cfg.total_steps is not None and self.step > cfg.total_steps and not self._warned_past_schedule:
            self._warned_past_schedule = True
            log.warning(
                "optimizer step %d is past the end of the learning-rate schedule (learner.total_steps=%d): the "
                "learning rate stays at lr * min_lr_ratio = %g from here on", self.step, cfg.total_steps,
                cfg.lr * cfg.min_lr_ratio,
            )  # fmt: skip
        batch_entropy = sums.pop("entropy_sum") / total_tokens
        for term in self.terms:
            metrics.update(term.end_step(batch_entropy))
        metrics.update(
            loss=sums.pop("loss"),
            pg_loss=sums.pop("pg_loss"),
            entropy=batch_entropy,
            clip_frac=sums.pop("clip_sum") / total_tokens,
            approx_kl=sums.pop("approx_kl_sum") / total_tokens,
            behaviour_weight=sums.pop("behaviour_weight_sum") / total_tokens,
            grad_norm=grad_norm,
            trained_tokens=total_tokens,
            total_tokens=sums.pop("total_tokens"),
            skipped=False,
            skipped_total=self.skipped_steps,
            policy_version=self.step,
        )
        metrics.update(sums)  # the loss terms' own metrics (kl, epo_entropy, ...), summed over micro-batches
        return metrics

    # ------------------------------------------------------------------ checkpoints and export

    def _trainable_state(self) -> dict[str, torch.Tensor]:
        if self.config.lora is None:
            return self.model.state_dict()
        return {n: p.detach() for n, p in self.model.named_parameters() if p.requires_grad}

    def save_checkpoint(self, path: str | os.PathLike[str]) -> Path:
        """Everything needed to continue exactly: weights, AdamW moments, schedule, RNGs, EPO history."""
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        state = {
            "format": 2,
            "model": self._trainable_state(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "skipped_steps": self.skipped_steps,
            "plugins": {key: plugin.state_dict() for key, plugin in self._plugins().items()},
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "config": self.config.to_dict(),
        }
        target = directory / CHECKPOINT_FILE
        tmp = directory / (CHECKPOINT_FILE + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, target)  # a crash mid-save leaves the previous checkpoint intact
        return target

    def load_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Restore a :meth:`save_checkpoint` directory into this learner (built from the initial model)."""
        target = Path(path) / CHECKPOINT_FILE
        if not target.is_file():
            raise FileNotFoundError(f"no learner checkpoint at {target}")
        state = torch.load(target, map_location=self.device, weights_only=True)
        if state.get("format") != 2:
            raise ValueError(f"{target} was written by an older agentrl (checkpoint format {state.get('format')}); start a new run")
        if (self.config.lora is None) != (state["config"]["lora"] is None):
            raise ValueError(
                "checkpoint and learner disagree on LoRA; build the learner with the checkpoint's config"
            )
        if self.config.lora is None:
            self.model.load_state_dict(state["model"])
        else:
            result = self.model.load_state_dict(state["model"], strict=False)
            if result.unexpected_keys:
                raise ValueError(f"checkpoint has unknown adapter weights: {result.unexpected_keys[:3]}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self.skipped_steps = int(state["skipped_steps"])
        for key, plugin in self._plugins().items():
            plugin.load_state_dict(state["plugins"].get(key, {}))
        self.generator.set_state(state["generator"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])

    def lora_adapter(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """The trained LoRA adapter in PEFT's saved format, or ``None`` when all weights are trained.

        Returns ``(tensors, adapter_config)``: tensors keyed as in PEFT's ``adapter_model.safetensors``
        and the ``adapter_config.json`` content (JSON-ready), so that ``PeftModel.from_pretrained`` and
        vLLM's LoRA loader read what the asynchronous publisher writes from them.
        """
        if self.config.lora is None:
            return None
        from peft import get_peft_model_state_dict

        tensors = {k: v.detach() for k, v in get_peft_model_state_dict(self.model).items()}
        config = self.model.peft_config["default"].to_dict()
        config = {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}  # as PeftConfig.save_pretrained
        return tensors, {**config, "inference_mode": True}

    def export_pretrained(self, path: str | os.PathLike[str]) -> Path:
        """Write the current policy as a plain Hugging Face model (LoRA merged) for the rollout side."""
        model = self.model
        if self.config.lora is not None:
            model = copy.deepcopy(model).merge_and_unload()
        model.save_pretrained(str(path))
        return Path(path)


def _masked_list_mean(values: list[float], mask: list[int]) -> float:
    return row_mean(torch.tensor([values]), torch.tensor([mask]))[0].item()
