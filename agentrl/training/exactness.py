"""Token exactness: do the behaviour log-probs a rollout engine returned equal the learner's own?

The learner's importance ratio ``pi_theta / pi_behaviour`` is exactly 1 on fresh data only if the
engine that sampled (transformers, vLLM in process, a vLLM or ``agentrl serve`` server) ran the
learner's weights and computed the same distribution. A weight update that never reached the
engine, a stale prefix cache, a different dtype or a truncated (top-p) distribution all show up as a
gap between the two. :func:`behaviour_logprob_gap` measures it on a sample of trained tokens of the
learner's *current* version (tokens of older versions are expected to differ), recomputing them as the
learner trains them (temperature from the data, allowed sets of constrained decoding);
:func:`check_behaviour_logprobs` turns the gap into metrics and warns or raises past a tolerance.

Figures to expect: float32 engines agree with a float32 learner to ~1e-5; a bfloat16 engine and a
bfloat16 learner differ by up to a few 1e-2 on single tokens (different kernels and reduction orders),
which is the training-inference mismatch the importance ratio then corrects.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Literal

import torch

from agentrl.errors import AgentrlError
from agentrl.training.batch import build_batch
from agentrl.trajectory import Episode

log = logging.getLogger("agentrl.training")


class TokenExactnessError(AgentrlError, RuntimeError):
    """The rollout engine's behaviour log-probs differ from the learner's beyond the configured tolerance."""


@torch.no_grad()
def behaviour_logprob_gap(
    learner: Any, episodes: list[Episode], *, version: int, max_tokens: int = 512, seed: int = 0
) -> dict[str, float]:
    """``|logp_behaviour - logp_learner|`` over up to ``max_tokens`` trained tokens of policy ``version``.

    The learner recomputes them exactly as it trains them (:meth:`Learner.score_steps`: each
    transcript's temperature, the allowed sets of constrained decoding). Steps are drawn in a seeded
    random order until ``max_tokens`` tokens are covered. Returns ``exact/tokens`` (how many were
    compared) and, when any were, ``exact/max_abs_logp_diff`` and ``exact/mean_abs_logp_diff``.
    """
    usable = [ep for ep in episodes if ep.error is None and any(any(t.sampled) for t in ep.transcripts)]
    if not usable:
        return {"exact/tokens": 0}
    batch = build_batch(usable)
    steps = [
        i for i in range(batch.n_steps)
        if batch.behaviour_logprobs[i] is not None and any(batch.loss_masks[i])
        and all(v == version for v, m in zip(batch.versions[i], batch.loss_masks[i], strict=True) if m)
    ]  # fmt: skip
    random.Random(seed).shuffle(steps)
    chosen, covered = [], 0
    for i in steps:
        if covered >= max_tokens:
            break
        chosen.append(i)
        covered += sum(batch.loss_masks[i])
    if not chosen:
        return {"exact/tokens": 0}
    scores = learner.score_steps(batch, set(chosen))
    gaps = [abs(b - c) for i in chosen
            for b, c, m in zip(batch.behaviour_logprobs[i], scores[i][0], batch.loss_masks[i], strict=True) if m]  # fmt: skip
    return {"exact/tokens": len(gaps), "exact/max_abs_logp_diff": max(gaps), "exact/mean_abs_logp_diff": sum(gaps) / len(gaps)}


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
    metrics = behaviour_logprob_gap(learner, episodes, version=learner.step, max_tokens=max_tokens, seed=seed)
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
