"""The two halves of a reflective agent: an actor that reads its memory, and a reflector that writes it.

:class:`ReflexionAgent` is the ordinary :class:`~agentrl.agents.llm.LLMAgent` (same prompts, layouts
and exact token bookkeeping) whose first user message of an episode starts with the memory block of
that task (:func:`~agentrl.retroformer.prompts.memory_block`). The memory is a plain mapping
``task_id -> reflections`` owned by the trial loop; the agent shows the last ``memory_size`` of them.

:class:`Reflector` turns failed trials into reflections with any :class:`~agentrl.policies.base.Policy`
(one batched ``generate`` for all of them). Each reflection is an :class:`~agentrl.trajectory.Episode`
of one step whose prompt ids are the reflector's chat prompt and whose response ids are what it
sampled, verbatim, with behaviour log-probs: exactly the shape the learner trains on. Its reward is
the rating ``G_{k,i+1} - G_{k,i}``, filled in by the trial loop once the next trial has been played.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from agentrl.agents.llm import DEFAULT_FORMAT, AgentEpisode, Layout, LLMAgent, PromptFormat
from agentrl.policies.base import Policy, SamplingParams, sampling_settings
from agentrl.retroformer import prompts
from agentrl.trajectory import Episode, Step, Transcript

REFLECTION_ENV_SUFFIX = "#reflection"


class ReflexionAgent(LLMAgent):
    """An :class:`LLMAgent` whose episodes open with the task's last ``memory_size`` reflections.

    ``memory`` maps a task id to its usable reflections, oldest first; the trial loop appends to it
    between trials (the agent only reads it, when an episode starts). With an empty memory the
    prompts are exactly those of a plain :class:`LLMAgent`.
    """

    def __init__(
        self,
        tokenizer: Any,
        prompt_format: PromptFormat = DEFAULT_FORMAT,
        *,
        memory: Mapping[str, Sequence[str]] | None = None,
        memory_size: int = 3,
        layout: Layout = "concat",
        history: int | None = None,
    ):
        if memory_size < 0:
            raise ValueError(f"memory_size must be >= 0, got {memory_size}")
        super().__init__(tokenizer, prompt_format, layout=layout, history=history)
        self.memory: Mapping[str, Sequence[str]] = memory if memory is not None else {}
        self.memory_size = memory_size

    def reflections_for(self, task_id: str) -> list[str]:
        """The reflections an episode of ``task_id`` starts with now (the last ``memory_size``)."""
        if self.memory_size == 0:
            return []
        return list(self.memory.get(task_id, ()))[-self.memory_size :]

    def start(self, obs: str, info: dict[str, Any], *, preamble: str | None = None) -> AgentEpisode:
        reflections = self.reflections_for(str(info.get("task_id", "")))
        block = "\n\n".join(p for p in (prompts.memory_block(reflections), preamble) if p)
        episode = super().start(obs, info, preamble=block or None)
        episode.meta["reflections"] = reflections
        return episode

    def messages(self, episode: AgentEpisode) -> list[dict[str, str]]:
        messages = super().messages(episode)
        window_start = len(episode.turns) - (self.history + 1) if self.history is not None else 0
        block = prompts.memory_block(episode.meta.get("reflections", []))
        if block and window_start > 0:  # the first turn (which holds the memory) fell out of the window
            messages[1] = {"role": "user", "content": f"{block}\n\n{messages[1]['content']}"}
        return messages


class Reflector:
    """The retrospective LM: failed trials in, reflection episodes (reward 0 until rated) out.

    ``sampling`` is how reflections are sampled (default: up to 96 new tokens at temperature 1).
    A summary that does not fit ``max_context`` (default: the policy's) with ``max_new_tokens`` is
    shortened by leaving out its earliest turns.
    """

    def __init__(
        self,
        policy: Policy,
        tokenizer: Any,
        *,
        sampling: SamplingParams | None = None,
        max_context: int | None = None,
        name: str | None = None,
    ):
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("the reflector's tokenizer has no chat template; set tokenizer.chat_template")
        self.policy = policy
        self.tokenizer = tokenizer
        self.sampling = sampling or SamplingParams(max_new_tokens=96, temperature=1.0)
        self.max_context = max_context or getattr(policy, "max_context", None)
        self.name = name or f"reflector:{getattr(policy, 'name', type(policy).__name__)}"
        self.special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])

    def prompt(self, trial: Episode, return_value: float | None = None) -> tuple[str, list[int]]:
        """The summary text and the exact prompt ids the reflector sees for ``trial``."""
        first_turn = 0
        while True:
            summary = prompts.trial_summary(trial, first_turn=first_turn, return_value=return_value)
            messages = [{"role": "system", "content": prompts.REFLECTOR_SYSTEM}, {"role": "user", "content": summary}]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            fits = self.max_context is None or len(ids) + self.sampling.max_new_tokens <= self.max_context
            if fits or first_turn >= trial.turns:
                return summary, ids
            first_turn += max(1, (trial.turns - first_turn) // 4)

    def reflect(self, trials: Sequence[Episode], returns: Sequence[float] | None = None) -> list[Episode]:
        """One reflection episode per trial, in order (one batched ``generate``).

        The reflection's text is the decoded response without special tokens; when it is unusable
        (:func:`~agentrl.retroformer.prompts.reflection_problem`) ``meta["usable"]`` is False and
        ``meta["problem"]`` says why. The trial loop fills in ``reward`` (the rating) and the linkage.
        """
        if not trials:
            return []
        returns = list(returns) if returns is not None else [t.episode_return for t in trials]
        prompted = [self.prompt(trial, value) for trial, value in zip(trials, returns, strict=True)]
        version = getattr(self.policy, "version", None)
        started = time.perf_counter()
        completions = self.policy.generate([ids for _, ids in prompted], self.sampling)
        seconds = time.perf_counter() - started
        out = []
        for trial, (summary, ids), completion in zip(trials, prompted, completions, strict=True):
            if completion.token_ids is None:
                raise ValueError("the reflector policy returned no token ids; it cannot be trained on")
            content = [t for t in completion.token_ids if t not in self.special_ids]
            text = self.tokenizer.decode(content).strip()
            problem = prompts.reflection_problem(text)
            step = Step(
                observation=summary,
                action=text,
                reward=0.0,
                terminated=True,
                info={"finish_reason": completion.finish_reason, "usable": problem is None},
                generation_seconds=seconds,
                policy_version=version,
            )
            transcript = Transcript(sampling=sampling_settings(self.sampling))
            transcript.append_prompt(ids, 0)
            transcript.append_sampled(
                completion.token_ids, 0, logprobs=completion.logprobs, entropies=completion.entropies, version=version
            )
            out.append(
                Episode(
                    env_id=trial.env_id + REFLECTION_ENV_SUFFIX,
                    task_id=trial.task_id,
                    split=trial.split,
                    seed=trial.seed,
                    agent=self.name,
                    policy_version=version,
                    instruction=trial.instruction,
                    first_observation=summary,
                    steps=[step],
                    transcripts=[transcript],
                    finished_at=time.time(),
                    meta={
                        "kind": "reflection",
                        "usable": problem is None,
                        "problem": problem,
                        "prompts_version": prompts.PROMPTS_VERSION,
                    },
                )
            )
        return out
