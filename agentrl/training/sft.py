"""Supervised warm-up: expert demonstrations in the agent's own token layout, and a cross-entropy update.

Demonstrations go through the same :class:`~agentrl.agents.llm.LLMAgent` bookkeeping as model
rollouts (the expert's action is written as the completion ``<action>A</action><eos>``), so a
demonstration episode is shaped exactly like a sampled one: same prompts, same layouts, and it can be
stored, exported and trained on like any other episode.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from agentrl.agents.llm import LLMAgent
from agentrl.core import TextEnv
from agentrl.evaluation import _jsonable
from agentrl.training.logprobs import token_logprobs_entropy
from agentrl.training.rows import build_rows, collate, micro_batches
from agentrl.trajectory import Episode, Step

log = logging.getLogger("agentrl.training")


def demonstrations(
    env: TextEnv,
    agent: LLMAgent,
    tasks: Sequence[str],
    *,
    env_id: str,
    seed: int = 0,
    oracle: bool = False,
) -> list[Episode]:
    """Play the env's expert (``oracle_action`` with ``oracle=True``) on ``tasks``, recording token ids.

    Episodes the expert does not win are returned too (``won=False``); callers usually keep the
    won ones. An expert that has no action for a state ends its episode with ``error`` set.
    """
    tokenizer = agent.tokenizer
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    episodes = []
    for task in tasks:
        episode = Episode(env_id=env_id, task_id=task, split=env.split, seed=seed, group_id=f"demo:{task}", agent="expert")
        obs, info = env.reset(seed=seed, options={"task": task})
        episode.instruction, episode.first_observation = info.get("instruction"), obs
        state = agent.start(obs, info)
        done = False
        while not done:
            action = env.oracle_action() if oracle else env.expert_action()
            if action is None:
                episode.error = "the expert has no action for this state"
                break
            prompt = agent.prompt_ids(state)
            response = list(tokenizer(f"<action>{action}</action>", add_special_tokens=False)["input_ids"]) + eos
            sent = agent.act(state, response)
            start = time.perf_counter()
            seen = obs
            obs, reward, terminated, truncated, info = env.step(sent)
            episode.steps.append(Step(
                observation=seen, action=sent, reward=reward,
                terminated=terminated, truncated=truncated, info=_jsonable(info),
                env_seconds=time.perf_counter() - start, prompt_ids=prompt, response_ids=response,
                loss_mask=[1] * len(response),
            ))
            done = terminated or truncated
            if not done:
                agent.observe(state, obs, info)
        episode.won, episode.progress = bool(info["won"]), float(info["progress"])
        episode.finished_at = time.time()
        episodes.append(episode)
    return episodes


def sft_update(
    model: nn.Module,
    episodes: Sequence[Episode],
    *,
    lr: float = 1e-4,
    epochs: int = 1,
    micro_batch_tokens: int = 8192,
    pad_token_id: int = 0,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Minimise the token-mean negative log-likelihood of the responses (loss-masked tokens only).

    One AdamW step per epoch-micro-batch group: each epoch shuffles the rows and takes one optimizer
    step per micro-batch. Returns one metrics dict per optimizer step (``loss``, ``tokens``).
    """
    rows = build_rows(episodes)
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    lengths = rows.row_lengths()
    history = []
    model.train()
    for _ in range(epochs):
        order = torch.randperm(rows.n_rows, generator=generator).tolist()
        for indices in micro_batches(lengths, order, micro_batch_tokens):
            batch = collate(rows, indices, pad_token_id, device)
            logp, _ = token_logprobs_entropy(model, batch["input_ids"], batch["attention_mask"], batch["targets"])
            tokens = batch["mask"].sum()
            loss = -(logp * batch["mask"]).sum() / tokens.clamp(min=1)
            if not torch.isfinite(loss):
                log.warning("sft: non-finite loss, step skipped")
                continue
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            history.append({"loss": loss.item(), "tokens": int(tokens.item())})
    return history
