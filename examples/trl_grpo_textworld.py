"""Train an LLM on an agentrl environment with TRL's GRPOTrainer and its multi-turn ``environment_factory``.

TRL (>= 1.0) plays multi-turn episodes as tool calling: each rollout gets its own environment
instance; ``reset(**row)`` starts the episode from a dataset row and its text joins the user message;
every public method of the environment is a tool the model may call (its docstring is the tool
schema); after each tool call TRL appends the result and lets the model continue, token ids
concatenated, until the model answers without a tool call or the completion budget runs out;
``get_reward()`` scores the finished rollout. :class:`AgentrlToolEnv` below is that interface over any
agentrl environment: a local one (``--env textworld``) or one served by ``agentrl env-serve``
(``--env http://127.0.0.1:8001``), with the same task panels and seeds.

Run (a tiny model, a few steps, on a CPU)::

    python examples/trl_grpo_textworld.py --model PATH --env textworld --max-steps 2

The model needs a chat template that TRL can parse tool calls from (Qwen2.5/Qwen3, Llama 3.1, ...).
``--warmup-steps N`` first teaches the tool-call format by supervised steps on expert tool calls
(the env's ``expert_action``), which a small model needs before it calls any tool by itself.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import agentrl

#: Which env every AgentrlToolEnv opens: an id/alias or an env-serve URL, and its constructor arguments.
ENV_SPEC: dict[str, Any] = {"env": "textworld", "split": "train", "max_turns": 8}


class AgentrlToolEnv:
    """One agentrl episode as a TRL environment: ``reset``, one tool (``act``), ``get_reward``."""

    def __init__(self) -> None:
        self.env = agentrl.make(ENV_SPEC["env"], split=ENV_SPEC["split"], max_turns=ENV_SPEC["max_turns"])
        self.done, self.progress, self.turns = True, 0.0, 0

    def reset(self, task: str, seed: int, **_: Any) -> str:
        """Start the episode of dataset row ``(task, seed)``; the text joins the user's message."""
        obs, info = self.env.reset(seed=int(seed), options={"task": task})
        self.done, self.progress, self.turns = False, 0.0, 0
        return f"\n\nGoal: {info.get('instruction') or ''}\n\n{obs}{_actions(info)}"

    def act(self, command: str) -> str:
        """Send one command to the game and read its answer.

        Args:
            command: The text command to play, for example "open fridge" or "go north".

        Returns:
            What the game answers.
        """
        if self.done:
            raise ValueError("the episode is over; stop calling tools and answer")
        obs, _, terminated, truncated, info = self.env.step(command)
        self.done, self.progress, self.turns = terminated or truncated, float(info["progress"]), self.turns + 1
        ending = " (the episode is over)" if self.done else ""
        return f"{obs}{ending}{'' if self.done else _actions(info)}"

    def get_reward(self) -> float:
        """The env's partial credit: 1.0 for a won episode (TRL adds it as a reward column)."""
        return self.progress


def _actions(info: dict[str, Any]) -> str:
    actions = info.get("admissible_actions")
    return f"\nAdmissible commands: {', '.join(actions)}" if actions else ""


def build_dataset(env_spec: dict[str, Any], tasks: int, group_seeds: int):
    """One row per (task, seed) of the env's fixed panel: the prompt, and what ``reset`` needs."""
    from datasets import Dataset

    env = agentrl.make(env_spec["env"], split=env_spec["split"], max_turns=env_spec["max_turns"])
    try:
        panel = env.task_ids()[:tasks]
    finally:
        env.close()
    system = "You play a text game. Call the act tool with one command at a time until the goal is reached."
    rows = [{"prompt": [{"role": "system", "content": system}, {"role": "user", "content": "Play the game."}],
             "task": task, "seed": seed} for task in panel for seed in range(group_seeds)]  # fmt: skip
    return Dataset.from_list(rows)


def warmup(model, tokenizer, env_spec: dict[str, Any], dataset, steps: int, lr: float = 3e-3) -> list[float]:
    """Supervised steps on the expert's first tool call of each row (teaches the tool-call format)."""
    import torch
    from transformers.utils import get_json_schema

    tool = get_json_schema(AgentrlToolEnv.act)
    examples = []
    env = agentrl.make(env_spec["env"], split=env_spec["split"], max_turns=env_spec["max_turns"])
    try:
        for row in dataset:
            holder = AgentrlToolEnv.__new__(AgentrlToolEnv)
            holder.env = env
            text = holder.reset(**row)
            command = env.expert_action()
            if command is None:
                continue
            prompt = row["prompt"][:-1] + [{**row["prompt"][-1], "content": row["prompt"][-1]["content"] + text}]
            call = {"role": "assistant", "content": "", "tool_calls": [
                {"type": "function", "function": {"name": "act", "arguments": {"command": command}}}]}
            head = tokenizer.apply_chat_template(prompt, tools=[tool], tokenize=False, add_generation_prompt=True)
            full = tokenizer.apply_chat_template(prompt + [call], tools=[tool], tokenize=False)
            head_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
            full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
            examples.append((full_ids, len(head_ids)))
    finally:
        env.close()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    for step in range(steps):
        ids, start = examples[step % len(examples)]
        inputs = torch.tensor([ids])
        labels = inputs.clone()
        labels[0, :start] = -100  # loss on the assistant's tool call only
        loss = model(input_ids=inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss))
    return losses


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a local model directory (or a Hub id)")
    parser.add_argument("--env", default="textworld", help="an agentrl env id/alias, or an agentrl env-serve URL")
    parser.add_argument("--split", default="train")
    parser.add_argument("--max-turns", type=int, default=8)
    parser.add_argument("--tasks", type=int, default=4, help="the first N tasks of the split's panel")
    parser.add_argument("--num-generations", type=int, default=2, help="rollouts per task (GRPO group size)")
    parser.add_argument("--max-steps", type=int, default=2)
    parser.add_argument("--max-completion-length", type=int, default=256)
    parser.add_argument("--warmup-steps", type=int, default=0, help="supervised steps on expert tool calls first")
    parser.add_argument("--output-dir", default="trl-grpo-agentrl")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    ENV_SPEC.update(env=args.env, split=args.split, max_turns=args.max_turns)
    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    dataset = build_dataset(ENV_SPEC, args.tasks, group_seeds=1)
    warmup_losses = warmup(model, tokenizer, ENV_SPEC, dataset, args.warmup_steps) if args.warmup_steps else []
    config = GRPOConfig(
        output_dir=args.output_dir, max_steps=args.max_steps, per_device_train_batch_size=args.num_generations,
        num_generations=args.num_generations, max_completion_length=args.max_completion_length, learning_rate=1e-5,
        logging_steps=1, save_strategy="no", report_to="none", use_cpu=not torch.cuda.is_available(),
        bf16=False, seed=args.seed, max_tool_calling_iterations=args.max_turns,
    )  # fmt: skip
    trainer = GRPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                          environment_factory=AgentrlToolEnv)  # fmt: skip
    trainer.train()
    history = [entry for entry in trainer.state.log_history if "loss" in entry]
    return {"warmup_losses": warmup_losses, "log_history": history, "steps": trainer.state.global_step}


if __name__ == "__main__":
    result = main()
    print({k: v for k, v in result.items() if k != "log_history"})
    for entry in result["log_history"]:
        print(entry)
