"""Retroformer at toy scale: does a reflection help a tiny actor on TextWorld? Success per trial, honestly.

Setup (2 CPU cores, minutes): the first ``--tasks`` easy TextWorld train games (2-step quests); a
tiny Qwen2 actor (word-piece tokenizer trained on the games' text) fine-tuned for ``--sft-epochs``
on the expert's walkthroughs so that it solves some games and not others; a reflector that is the
untrained base model of the same family. Three arms on the same games, same actor, same seeds:

* ``retry``: up to N trials with no memory (the baseline: retrying alone);
* ``reflexion``: up to N trials with the untrained reflector's reflections in the actor's prompt;
* ``retroformer``: the same after ``--iterations`` PPO updates of the reflector on its ratings.

The actor samples at ``--actor-temperature`` (default 0.7) so a retry is a fresh attempt. The JSON
result (``benchmarks/results/retroformer_demo.json``) holds success@1..N per arm and the ratings.
Expect no help from reflections here: a random-weight reflector writes noise, and the actor never
learned to read advice; the point is that the pipeline runs end to end and measures this honestly.

    python benchmarks/retroformer_demo.py [--tasks 8] [--trials 4] [--iterations 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_result  # noqa: E402

ENV_ID = "agentrl/TextWorld-v0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--sft-epochs", type=int, default=45)
    parser.add_argument("--max-turns", type=int, default=4)
    parser.add_argument("--actor-temperature", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("AGENTRL_CACHE", str(Path(tempfile.gettempdir()) / "agentrl-retroformer-demo"))

    import torch

    import agentrl
    from agentrl.agents.llm import ACTION_STOP, PromptFormat
    from agentrl.policies import HFPolicy, SamplingParams
    from agentrl.retroformer import Reflector, ReflexionAgent, retrospective_batch, run_trials
    from agentrl.rollout import Collector, ModelActor
    from agentrl.testing import tiny_model
    from agentrl.training.config import LearnerConfig
    from agentrl.training.learner import Learner
    from agentrl.training.sft import demonstrations, sft_update

    started = time.perf_counter()
    torch.manual_seed(args.seed)
    fmt = PromptFormat("Play the game. Reply <action>command</action>.", list_admissible=False)
    env = agentrl.make("textworld", split="train", max_turns=args.max_turns)
    tasks = env.task_ids("train")[: args.tasks]
    texts = []
    for task in tasks:
        obs, info = env.reset(seed=0, options={"task": task})
        texts += [obs, info["instruction"]]
    workdir = Path(tempfile.mkdtemp(prefix="retroformer-demo-"))
    path = tiny_model(workdir / "base", texts=texts * 3, vocab_size=2048, seed=args.seed)
    actor = HFPolicy(path, name="actor", seed=args.seed)
    agent = ReflexionAgent(actor.tokenizer, fmt, memory_size=3)
    demos = [ep for ep in demonstrations(env, agent, tasks, env_id=ENV_ID) if ep.won]
    env.close()
    sft = sft_update(actor.model, demos, lr=5e-3, epochs=args.sft_epochs, pad_token_id=actor.pad_id, seed=args.seed)
    actor.model.requires_grad_(False)
    actor_sampling = SamplingParams(max_new_tokens=16, temperature=args.actor_temperature, stop=(ACTION_STOP,))
    reflector_policy = HFPolicy(path, name="reflector", seed=args.seed + 1)
    reflector = Reflector(reflector_policy, reflector_policy.tokenizer,
                          sampling=SamplingParams(max_new_tokens=32, temperature=1.0))

    def arm(memory_size: int, name: str, seed: int):
        agent.memory_size = memory_size
        arm_actor = HFPolicy(actor.model, actor.tokenizer, seed=args.seed, name="actor")  # same sampling stream per arm
        with Collector(lambda: agentrl.make("textworld", split="train", max_turns=args.max_turns),
                       ModelActor(arm_actor, agent, actor_sampling), env_id=ENV_ID, max_parallel=8) as collector:
            return run_trials(collector, agent, reflector, tasks, trials=args.trials, seed=seed, chain_prefix=f"{name}/")

    results = {}
    for name, size in (("retry", 0), ("reflexion", 3)):
        report = arm(size, name, args.seed)
        results[name] = report.summary()
        print(f"{name:12s} success@1..{args.trials}: " + " ".join(f"{s:.3f}" for s in report.success_at()), flush=True)

    learner = Learner(reflector_policy.model, LearnerConfig(lr=1e-4, epochs=4, total_steps=4 * args.iterations),
                      pad_token_id=reflector_policy.pad_id)
    training = []
    for iteration in range(1, args.iterations + 1):
        report = arm(3, f"train{iteration}", args.seed + 1000 * iteration)
        batch = retrospective_batch(report.reflections, batch_id=str(iteration))
        ratings = [r.steps[0].reward for r in batch]
        entry = {"iteration": iteration, **report.summary(), "ratings": ratings}
        if len(set(ratings)) > 1:
            metrics = learner.update(batch)
            reflector_policy.version = learner.step
            entry["loss"] = metrics[-1]["loss"]
        training.append(entry)
        print(f"train {iteration}: {len(batch)} rated reflections, ratings {ratings}", flush=True)
    report = arm(3, "retroformer", args.seed)
    results["retroformer"] = report.summary()
    print(f"{'retroformer':12s} success@1..{args.trials}: " + " ".join(f"{s:.3f}" for s in report.success_at()))

    base = results["retry"]["success_at"][-1]
    verdict = {
        arm_name: round(results[arm_name]["success_at"][-1] - base, 4) for arm_name in ("reflexion", "retroformer")
    }
    print(f"success@{args.trials} minus the retry baseline: {verdict}")
    path_out = write_result("retroformer_demo", {
        "args": vars(args), "sft": {"demonstrations": len(demos), "first_loss": sft[0]["loss"], "last_loss": sft[-1]["loss"]},
        "arms": results, "training": training, "gain_over_retry_at_N": verdict,
        "seconds": time.perf_counter() - started,
    })  # fmt: skip
    print(f"written {path_out}")


if __name__ == "__main__":
    main()
