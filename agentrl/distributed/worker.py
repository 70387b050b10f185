"""A rollout worker: plays groups of episodes with the newest weights it has and writes them to the store.

The same class runs in-process (tests, debugging) or as a Ray actor (:func:`remote_worker_class`).
Weights are picked up **between groups**: at the start of every :meth:`RolloutWorker.collect` call
the worker loads the newest published version (:mod:`agentrl.distributed.weights`) if it is newer
than its own (the first call loads whatever is published, version 0 included, so a worker plays the
learner's weights from the start), so every turn of an episode comes from one policy version. A group is written to the
store in one transaction: a worker killed mid-group leaves nothing of it behind (the driver records
the group as discarded).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from agentrl.distributed.rollout_engine import RolloutConfig


@dataclass
class WorkerSpec:
    """Everything a rollout worker needs to build itself in another process (plain, picklable values)."""

    model: str  # initial policy (version 0): a Hugging Face model directory or Hub id
    env: str  # environment id or alias
    store: str  # trajectory store URL (PostgreSQL when workers run on several machines)
    run_id: int  # the store's run the episodes belong to
    weights_dir: str  # where the learner publishes versions (a shared directory across machines)
    env_args: dict[str, Any] = field(default_factory=dict)  # env constructor arguments
    variants: dict[str, dict[str, Any]] = field(default_factory=lambda: {"default": {}})  # name -> env_args overrides
    split: str = "train"  # the panel the tasks come from
    max_turns: int = 8  # turn budget of an episode
    layout: str = "concat"  # agent token layout
    history: int | None = None  # per_step layout: turns of history
    max_new_tokens: int = 32  # tokens per turn
    temperature: float = 1.0  # sampling temperature
    max_parallel: int = 8  # live episodes per worker (one batched generate per turn)
    seed: int = 0  # base of the worker's sampling seed (worker i uses seed + 1000 * i)
    torch_threads: int = 1  # intra-op threads per worker (leave cores to the learner)
    revision: str | None = None  # Hub commit of ``model`` (pins every worker, restarted ones too, to the learner's base)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)  # backend: hf, vllm (needs a GPU per worker) or openai
    lora_rank: int | None = None  # the learner's LoRA rank when it publishes adapters (a vLLM engine is built for them)


def worker_policy(spec: WorkerSpec, worker_id: int) -> tuple[Any, Any]:
    """``(policy, tokenizer)`` of worker ``worker_id`` on ``spec.rollout.backend``.

    ``openai``: ``rollout.url`` lists one server per worker (comma-separated; worker ``i`` uses the
    ``i``-th): a worker loads each new version into its server between groups, so two workers sharing
    one server would change each other's weights mid-group.
    """
    rollout, seed = spec.rollout, spec.seed + 1000 * worker_id
    rollout.validate()
    if rollout.backend == "hf":
        from agentrl.policies import HFPolicy

        policy = HFPolicy(spec.model, seed=seed, revision=spec.revision)
        return policy, policy.tokenizer
    if rollout.backend == "vllm":
        from agentrl.policies.vllm import VLLMPolicy

        policy = VLLMPolicy(spec.model, seed=seed, revision=spec.revision, enable_lora=spec.lora_rank is not None,
                            max_lora_rank=spec.lora_rank or 16, **rollout.engine_args)  # fmt: skip
        return policy, policy.tokenizer
    from agentrl.policies.openai import OpenAIPolicy
    from agentrl.policies.sources import load_tokenizer

    urls = [u.strip() for u in rollout.url.split(",") if u.strip()]
    policy = OpenAIPolicy(urls[worker_id % len(urls)], rollout.served_model, api_key=rollout.api_key, mode="completions")
    return policy, load_tokenizer(spec.model, revision=spec.revision)


class RolloutWorker:
    """Builds policy, agent and store once; :meth:`collect` plays one group per call."""

    def __init__(self, spec: WorkerSpec, worker_id: int):
        import torch

        import agentrl
        from agentrl.agents.llm import LLMAgent, prompt_format_for
        from agentrl.store import open_store

        torch.set_num_threads(max(1, spec.torch_threads))
        self.spec = spec
        self.worker_id = worker_id
        self.policy, tokenizer = worker_policy(spec, worker_id)
        self.agent = LLMAgent(tokenizer, prompt_format_for(spec.env), layout=spec.layout,
                              history=spec.history)
        self.entry = agentrl.registry.resolve(spec.env)
        self.store = open_store(spec.store)
        self._collectors: dict[str, Any] = {}
        self._loaded = False  # until a version is loaded, even version 0 counts as newer
        self.calls = 0

    def pid(self) -> int:
        """Process id (the driver's failure tests and orphan checks use it)."""
        return os.getpid()

    def refresh(self) -> int:
        """Load the newest published weights if they are newer than ours; returns our version.

        The policy loads the version directory itself (``load_published``: full weights replace the
        model's, LoRA adapters run on the base model), while this worker holds the version on disk so
        that the learner cannot prune it before a server has read it.
        """
        from agentrl.distributed.weights import hold_latest

        with hold_latest(self.spec.weights_dir, newer_than=self.policy.version if self._loaded else None) as held:
            if held is None:
                return self.policy.version
            version, path = held
            self.policy.load_published(path, version)
        self._loaded = True
        return self.policy.version

    def next_token_logprobs(self, token_ids: list[int]) -> Any:
        """``[len(token_ids), V]`` log-softmax of the worker's current model at every position (float32 numpy).

        Lets a driver check that a worker runs the learner's weights (weight sync) without playing an episode.
        """
        import torch

        ids = torch.tensor([list(token_ids)], dtype=torch.long, device=self.policy.device)
        with torch.inference_mode():
            logits = self.policy.model(input_ids=ids).logits[0].float()
        return torch.log_softmax(logits, -1).cpu().numpy()

    def _collector(self, variant: str):
        import agentrl
        from agentrl.policies import SamplingParams
        from agentrl.rollout import Collector, ModelActor

        if variant not in self._collectors:
            if variant not in self.spec.variants:
                raise ValueError(f"unknown variant {variant!r}; known: {', '.join(self.spec.variants)}")
            kwargs = {"max_turns": self.spec.max_turns, **self.spec.env_args, **self.spec.variants[variant]}
            sampling = SamplingParams(max_new_tokens=self.spec.max_new_tokens, temperature=self.spec.temperature,
                                      stop=("</action>",), return_entropies=True)
            split = self.spec.split
            self._collectors[variant] = Collector(
                lambda: agentrl.make(self.entry.id, split=split, **kwargs), ModelActor(self.policy, self.agent, sampling),
                env_id=self.entry.id, max_parallel=self.spec.max_parallel, split=split,
            )
        return self._collectors[variant]

    def collect(self, call_id: str, task: str, group_size: int, seed: int, variant: str = "default") -> dict[str, Any]:
        """Play ``group_size`` episodes of ``task`` with the newest weights; write them in one transaction.

        Group ids become ``<call_id>/<task>`` so groups of different workers never merge. Returns a
        summary (episode ids, policy version, wins, seconds).
        """
        started = time.perf_counter()
        version = self.refresh()
        self.calls += 1
        episodes = self._collector(variant).run([task], group_size=group_size, seed=seed)
        for episode in episodes:
            episode.group_id = f"{call_id}/{task}"
            episode.meta.update(worker=self.worker_id, call=call_id, variant=variant)
        ids = self.store.write_episodes(self.spec.run_id, episodes)
        return {
            "call": call_id, "worker": self.worker_id, "ids": ids, "policy_version": version,
            "won": sum(ep.won for ep in episodes), "episodes": len(episodes),
            "seconds": time.perf_counter() - started,
        }  # fmt: skip

    def close(self) -> None:
        for collector in self._collectors.values():
            collector.close()
        self._collectors.clear()
        self.store.close()


def remote_worker_class(num_cpus: float = 1.0, num_gpus: float = 0.0):
    """``RolloutWorker`` as a Ray actor class (restarts are the driver's job: ``max_restarts=0``).

    Ray hides every GPU from an actor that reserves none, so a worker generates on the CPU unless
    ``num_gpus`` > 0 (a fraction lets several workers share one device).
    """
    import ray

    return ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0, max_task_retries=0)(RolloutWorker)
