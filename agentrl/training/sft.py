"""Supervised warm-up: expert demonstrations in the agent's own token layout, and a cross-entropy update.

Demonstrations are played by the one episode runner with a scripted expert whose actions are written
into the :class:`~agentrl.agents.llm.LLMAgent`'s transcript as the completion
``<action>A</action><eos>`` (:class:`~agentrl.rollout.actors.ScriptedActor` with ``record``), so a
demonstration episode is shaped exactly like a sampled one: same prompts, same layouts, and it can be
stored, exported and trained on like any other episode.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from agentrl.agents.llm import LLMAgent
from agentrl.agents.scripted import ExpertAgent, OracleAgent
from agentrl.core import TextEnv
from agentrl.rollout.actors import ScriptedActor
from agentrl.rollout.collector import Collector
from agentrl.training.batch import build_batch, collate, micro_batches
from agentrl.training.logprobs import token_logprobs_entropy
from agentrl.trajectory import Episode

log = logging.getLogger("agentrl.training")


def demonstrations(
    env: TextEnv,
    agent: LLMAgent,
    tasks: Sequence[str],
    *,
    env_id: str,
    seed: int = 0,
    oracle: bool = False,
    on_episode: Callable[[Episode], Any] | None = None,
) -> list[Episode]:
    """Play the env's expert (its oracle with ``oracle=True``) on ``tasks`` with ``seed``, recording token ids.

    Episodes the expert does not win are returned too (``won=False``); callers usually keep the
    won ones. An expert that has no action for a state ends its episode with ``error`` set.
    ``env`` stays open (it is the caller's). ``on_episode`` is called as each one ends (a progress bar).
    """
    expert = OracleAgent if oracle else ExpertAgent
    actor = ScriptedActor(expert, record=agent)
    return Collector(lambda: env, actor, env_id=env_id, max_parallel=1, split=env.split, on_episode=on_episode).run(tasks, seed=seed)


def sft_update(
    model: nn.Module,
    episodes: Sequence[Episode],
    *,
    lr: float = 1e-4,
    epochs: int = 1,
    micro_batch_tokens: int = 8192,
    pad_token_id: int = 0,
    seed: int = 0,
    on_step: Callable[[int, int], Any] | None = None,
) -> list[dict[str, Any]]:
    """Minimise the token-mean negative log-likelihood of the responses (loss-masked tokens only).

    Each epoch shuffles the sequences (transcripts) and takes one AdamW step per micro-batch.
    Returns one metrics dict per optimizer step (``loss``, ``tokens``). ``on_step(done, total)`` is
    called after each micro-batch (a progress bar).
    """
    batch = build_batch(episodes)
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    lengths = batch.seq_lengths()
    steps_of = batch.seq_steps()
    history = []
    total = epochs * len(micro_batches(lengths, range(len(batch.sequences)), micro_batch_tokens))
    done = 0
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(batch.sequences), generator=generator).tolist()
        for indices in micro_batches(lengths, order, micro_batch_tokens):
            tensors = collate(batch, indices, pad_token_id, device, steps_of)
            logp, _ = token_logprobs_entropy(model, tensors["input_ids"], tensors["attention_mask"], tensors["targets"])
            logp = logp[tensors["step_seq"], tensors["step_pos"]]  # [n, R]
            done += 1
            if on_step is not None:
                on_step(done, total)
            tokens = tensors["mask"].sum()
            loss = -(logp * tensors["mask"]).sum() / tokens.clamp(min=1)
            if not torch.isfinite(loss):
                log.warning("sft: non-finite loss, step skipped")
                continue
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            history.append({"loss": loss.item(), "tokens": int(tokens.item())})
    return history
