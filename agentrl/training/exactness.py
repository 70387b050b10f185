"""Token exactness: do the behaviour log-probs a rollout engine returned equal the learner's own?

The learner's importance ratio ``pi_theta / pi_behaviour`` is exactly 1 on fresh data only if the
engine that sampled (transformers, vLLM in process, a vLLM or ``agentrl serve`` server) ran the
learner's weights and computed the same distribution. A weight update that never reached the
engine, a stale prefix cache, a different dtype or a truncated (top-p) distribution all show up as a
gap between the two. :func:`behaviour_logprob_gap` measures it on a sample of sampled tokens of the
learner's *current* version (tokens of older versions are expected to differ), recomputing them with
the learner's model at the temperature each transcript records; :func:`check_behaviour_logprobs`
turns the gap into metrics and warns or raises past a tolerance.

Figures to expect: float32 engines agree with a float32 learner to ~1e-5; a bfloat16 engine and a
bfloat16 learner differ by up to a few 1e-2 on single tokens (different kernels and reduction orders),
which is the training-inference mismatch the importance ratio then corrects.
"""

from __future__ import annotations

import contextlib
import logging
import random
from typing import Any, Literal

import torch
from torch import nn

from agentrl.errors import AgentrlError
from agentrl.training.logprobs import IGNORE, token_logprobs_entropy
from agentrl.trajectory import Episode, Transcript

log = logging.getLogger("agentrl.training")


class TokenExactnessError(AgentrlError, RuntimeError):
    """The rollout engine's behaviour log-probs differ from the learner's beyond the configured tolerance."""


def _scored(transcript: Transcript, version: int) -> list[int]:
    """Positions of sampled tokens of ``version`` that carry a behaviour log-prob."""
    if transcript.logprobs is None:
        return []
    return [i for i in range(1, len(transcript.ids)) if transcript.sampled[i] and transcript.versions[i] == version]


def _autocast(device: torch.device, precision: str):
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def behaviour_logprob_gap(
    model: nn.Module,
    episodes: list[Episode],
    *,
    version: int,
    max_tokens: int = 512,
    device: torch.device | str | None = None,
    precision: Literal["auto", "fp32", "bf16"] = "auto",
    seed: int = 0,
) -> dict[str, float]:
    """``|logp_behaviour - logp_learner|`` over up to ``max_tokens`` sampled tokens of policy ``version``.

    Whole transcripts are drawn in a seeded random order until ``max_tokens`` tokens are covered (one
    forward per transcript). Returns ``exact/tokens`` (how many were compared) and, when any were,
    ``exact/max_abs_logp_diff`` and ``exact/mean_abs_logp_diff``.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    candidates = [t for ep in episodes if ep.error is None for t in ep.transcripts if _scored(t, version)]
    random.Random(seed).shuffle(candidates)
    diffs: list[torch.Tensor] = []
    covered = 0
    was_training = model.training
    model.eval()
    try:
        for transcript in candidates:
            if covered >= max_tokens:
                break
            positions = _scored(transcript, version)[: max_tokens - covered]
            ids = torch.tensor([transcript.ids], dtype=torch.long, device=device)  # [1, L]
            targets = torch.full_like(ids, IGNORE)
            at = torch.tensor(positions, dtype=torch.long, device=device)
            targets[0, at - 1] = ids[0, at]  # position t scores token t + 1
            temperature = float((transcript.sampling or {}).get("temperature", 1.0)) or 1.0  # greedy: T = 1
            with _autocast(device, precision):
                logp, _ = token_logprobs_entropy(model, ids, torch.ones_like(ids), targets, temperature)
            learner = logp[0, at - 1].double()
            behaviour = torch.tensor([transcript.logprobs[i] for i in positions], dtype=torch.float64, device=device)
            diffs.append((behaviour - learner).abs())
            covered += len(positions)
    finally:
        model.train(was_training)
    if not diffs:
        return {"exact/tokens": 0}
    gap = torch.cat(diffs)
    return {"exact/tokens": int(gap.numel()), "exact/max_abs_logp_diff": gap.max().item(),
            "exact/mean_abs_logp_diff": gap.mean().item()}  # fmt: skip


def check_behaviour_logprobs(
    learner: Any,
    episodes: list[Episode],
    *,
    max_tokens: int = 512,
    tolerance: float = 0.1,
    on_mismatch: Literal["warn", "raise"] = "warn",
    seed: int = 0,
) -> dict[str, float]:
    """:func:`behaviour_logprob_gap` for the tokens of ``learner``'s current version (``learner.step``),
    with ``learner``'s model, device and precision; past ``tolerance`` it logs a warning or raises
    :class:`TokenExactnessError`. Call it after collecting and before the update."""
    metrics = behaviour_logprob_gap(learner.model, episodes, version=learner.step, max_tokens=max_tokens,
                                    device=learner.device, precision=learner.config.precision, seed=seed)  # fmt: skip
    gap = metrics.get("exact/max_abs_logp_diff")
    if gap is None and any(t.logprobs is not None and any(t.sampled) for ep in episodes for t in ep.transcripts):
        log.warning("no sampled token of the batch is labelled with the learner's version %d: did the rollout engine "
                    "take the last weight update?", learner.step)  # fmt: skip
    if gap is not None and gap > tolerance:
        message = (f"rollout log-probs differ from the learner's at version {learner.step}: max |diff| {gap:.3g} over "
                   f"{metrics['exact/tokens']} tokens (mean {metrics['exact/mean_abs_logp_diff']:.3g}, tolerance "
                   f"{tolerance:g}); is the rollout engine running the learner's weights?")  # fmt: skip
        if on_mismatch == "raise":
            raise TokenExactnessError(message)
        log.warning(message)
    return metrics
