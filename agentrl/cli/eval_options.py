"""The options of ``agentrl eval`` as one value, checked once, before any work is done."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentrl.cli.common import UserError, check_output_path

LAYOUTS = ("concat", "per_step")


@dataclass(frozen=True)
class EvalOptions:
    """What ``agentrl eval`` was asked to do; building one checks every value (a :class:`UserError` if wrong)."""

    env: str  # env id or alias
    agent: str | None = None  # scripted agent name or "reflexion"; None = random (or the model with --model)
    split: str | None = None  # task panel; None = the env's evaluation split
    episodes: int | None = None  # tasks from the start of the panel; None = all
    group_size: int = 1  # episodes per task, seeds seed .. seed+G-1
    seed: int = 0  # base seed
    max_turns: int | None = None  # turn budget per episode; None = the env's
    output: Path | None = None  # JSON report file
    env_args: dict[str, tuple[Any, str]] = field(default_factory=dict)  # -e key=value as {key: (value, raw)}
    store: str | None = None  # trajectory store URL recording every episode
    model: str | None = None  # HF model directory, vllm:PATH or an OpenAI-compatible URL
    tokenizer: str | None = None  # tokenizer directory for a URL model
    api_key: str | None = None  # API key for a URL model
    max_new_tokens: int = 128  # model: tokens per turn at most
    temperature: float = 1.0  # model: sampling temperature (0 = greedy)
    top_p: float = 1.0  # model: nucleus sampling mass
    parallel: int = 8  # model: episodes run at once
    layout: str = "concat"  # model: token layout, concat or per_step
    history: int | None = None  # model, per_step layout: turns of history in the prompt
    admissible_only: bool = False  # model: decode only the admissible actions
    reflector: str | None = None  # reflexion: reflector model (None = a copy of the actor)
    trials: int = 4  # reflexion: trials per task
    memory_size: int = 3  # reflexion: reflections kept in the actor's prompt

    def __post_init__(self) -> None:
        from agentrl.agents import SCRIPTED_AGENTS

        at_least = {"--episodes": (self.episodes, 1), "--group-size": (self.group_size, 1),
                    "--max-turns": (self.max_turns, 1), "--parallel": (self.parallel, 1),
                    "--max-new-tokens": (self.max_new_tokens, 1), "--trials": (self.trials, 1),
                    "--history": (self.history, 1), "--memory-size": (self.memory_size, 0)}  # fmt: skip
        for option, (value, low) in at_least.items():
            if value is not None and value < low:
                default = " (leave it out for the whole panel)" if option == "--episodes" else ""
                raise UserError(f"{option} must be >= {low}, got {value}", hint=f"give {option} {max(low, 1)} or more{default}")
        if self.temperature < 0:
            raise UserError(f"--temperature must be >= 0, got {self.temperature}", hint="0 is greedy decoding")
        if not 0 < self.top_p <= 1:
            raise UserError(f"--top-p must be in (0, 1], got {self.top_p}", hint="1 keeps the whole distribution")
        if self.layout not in LAYOUTS:
            raise UserError(f"unknown --layout {self.layout!r}", hint=f"choose {' or '.join(LAYOUTS)}")
        agents = [*SCRIPTED_AGENTS, "reflexion"]
        if self.agent is not None and self.agent not in agents:
            raise UserError(f"unknown agent {self.agent!r}; choose one of {', '.join(agents)}",
                            hint="model agents are selected with --model")  # fmt: skip
        if self.agent == "reflexion" and self.model is None:
            raise UserError("--agent reflexion needs an actor model", hint="add --model PATH (and optionally --reflector PATH)")
        if self.model is not None and self.agent not in (None, "reflexion"):
            raise UserError(f"--agent {self.agent} and --model both choose the agent", hint="give one of them")
        for option, value in (("--tokenizer", self.tokenizer), ("--admissible-only", self.admissible_only or None)):
            if value is not None and self.model is None:
                raise UserError(f"{option} applies to a model agent", hint="add --model PATH or URL")
        if self.reflector is not None and self.agent != "reflexion":
            raise UserError("--reflector applies to --agent reflexion", hint="add --agent reflexion")
        if self.output is not None:
            check_output_path(self.output)

    @property
    def agent_kind(self) -> str:
        """``"reflexion"``, ``"model"`` or the scripted agent's name."""
        if self.agent == "reflexion":
            return "reflexion"
        return "model" if self.model is not None else (self.agent or "random")

    @property
    def env_overrides(self) -> dict[str, Any]:
        """Constructor arguments that come from the CLI's own options rather than ``-e``."""
        return {"max_turns": self.max_turns} if self.max_turns is not None else {}

    def sampling(self) -> Any:
        """The model's :class:`~agentrl.policies.base.SamplingParams` (actions end at the action stop string)."""
        from agentrl.agents.llm import ACTION_STOP
        from agentrl.policies.base import SamplingParams

        return SamplingParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                              stop=(ACTION_STOP,))  # fmt: skip
