"""Retroformer: ratings, memory, garbage reflections, store linkage, and the reflector's PPO update.

The end-to-end tests run real TextWorld games with tiny real models. The actor is a tiny model
fine-tuned so that outcomes are known by hand: it solves task A outright, and solves task B only
when its prompt opens with a memory block (it was shown B's expert actions under a reflection and
``look`` without one). So a usable reflection after B's failed trial is rated ``1 - 0 = +1`` and an
unusable one ``0 - 0 = 0`` (the next trial ran without it), and A gets no reflection at all. The
reflector is the untrained base model of the same family: its reflections are noise, which is
exactly what makes both cases occur.
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("textworld")

import agentrl  # noqa: E402
from agentrl.agents.llm import LLMAgent, PromptFormat  # noqa: E402
from agentrl.policies import Completion, HFPolicy, SamplingParams  # noqa: E402
from agentrl.retroformer import Reflector, ReflexionAgent, ratings, retrospective_batch, run_trials  # noqa: E402
from agentrl.retroformer.prompts import MEMORY_HEADER, memory_block, reflection_problem  # noqa: E402
from agentrl.retroformer.trials import TrialReport  # noqa: E402
from agentrl.rollout import Collector, ModelActor  # noqa: E402
from agentrl.testing import installed_cli, token_episode  # noqa: E402
from agentrl.trajectory import Episode, Step  # noqa: E402

ENV_ID = "agentrl/TextWorld-v0"
FORMAT = PromptFormat("Play the game. Reply <action>command</action>.", list_admissible=False)
MAX_TURNS = 2  # the quests of the first two train games take 2 expert steps


# ---------------------------------------------------------------------------- pure parts


def test_ratings_are_next_return_minus_this_return():
    assert ratings([0.0, 0.0, 1.0, 1.0]) == [0.0, 1.0, 0.0]
    assert ratings([2.0, 0.5]) == [-1.5]
    assert ratings([3.0]) == []


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty"),
        ("   \n ", "empty"),
        ("plan", "too short (1 words with letters, need 3)"),
        ("!!! ??? 123 ...", "too short (0 words with letters, need 3)"),
        ("open the \x07 fridge first", "control characters"),
        ("I forgot to open the fridge. Next time: open fridge, take apple.", None),
    ],
)
def test_reflection_problem(text, problem):
    assert reflection_problem(text) == problem


def test_success_at_is_cumulative_over_trials():
    report = TrialReport(
        ["a", "b", "c"], 3, returns={}, won={"a": [False, True], "b": [True], "c": [False, False, False]}
    )
    assert report.success_at() == [pytest.approx(1 / 3), pytest.approx(2 / 3), pytest.approx(2 / 3)]


def test_memory_block_and_agent_prompts(tiny_chat_model):
    policy = HFPolicy(tiny_chat_model)
    tok = policy.tokenizer
    plain = LLMAgent(tok, FORMAT)
    memory = {"t": ["one two three", "four five six", "seven eight nine", "ten eleven twelve"]}
    agent = ReflexionAgent(tok, FORMAT, memory=memory, memory_size=3)
    info = {"task_id": "t", "instruction": "take the apple", "admissible_actions": None}
    assert agent.reflections_for("t") == memory["t"][-3:]
    state = agent.start("You are in a kitchen.", info)
    first_user = state.turns[0].user
    assert first_user.startswith(MEMORY_HEADER + "\nAttempt 1: four five six\nAttempt 2: seven eight nine\n")
    assert "one two three" not in first_user
    assert first_user.endswith(plain.start("You are in a kitchen.", info).turns[0].user)
    # the concat prompt ids are the template over the new first message, tokenised once
    messages = [{"role": "system", "content": FORMAT.system}, {"role": "user", "content": first_user}]
    expected = tok(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), add_special_tokens=False)
    assert agent.prompt_ids(state) == expected["input_ids"]
    # no memory for a task: exactly the plain agent's prompt
    other = {**info, "task_id": "u"}
    assert agent.prompt_ids(agent.start("x", other)) == plain.prompt_ids(plain.start("x", other))
    assert memory_block([]) == ""
    # per-step layout with a short history window: the memory stays in the first message shown
    windowed = ReflexionAgent(tok, FORMAT, memory=memory, memory_size=1, layout="per_step", history=1)
    state = windowed.start("You are in a kitchen.", info)
    for obs in ("You see a fridge.", "The fridge is closed."):
        windowed.act(state, Completion(None, None, "stop", text="<action>look</action>"))
        windowed.observe(state, obs, info)
    messages = windowed.messages(state)
    assert len(state.turns) == 3 and len(messages) == 1 + 3  # system + (user, assistant, user)
    assert messages[1]["content"].startswith(memory_block(["ten eleven twelve"]) + "\n\nTask: take the apple")


def _reflection(task: str, rating: float, prompt: list[int], response: list[int]) -> Episode:
    return token_episode([dict(prompt=prompt, response=response, reward=rating, observation="summary", action="text")],
                         env_id=ENV_ID + "#reflection", task_id=task, meta={"kind": "reflection", "rating": rating})  # fmt: skip


def test_ratings_are_normalised_within_the_batch_or_the_task(tiny_chat_model):
    from agentrl.training.batch import build_batch
    from agentrl.training.config import LearnerConfig
    from agentrl.training.learner import Learner

    policy = HFPolicy(tiny_chat_model)
    learner = Learner(policy.model, LearnerConfig(), pad_token_id=policy.pad_id)
    rated = [_reflection(t, r, [5, 6], [7, 8]) for t, r in (("a", 1.0), ("a", 0.0), ("b", 0.0), ("b", -1.0))]
    unrated = token_episode([dict(prompt=[1], response=[2])], env_id=ENV_ID + "#reflection", task_id="c")
    batch = retrospective_batch([*rated, unrated], batch_id="7")
    assert [e.group_id for e in batch] == ["retro:7"] * 4  # the unrated one is left out
    # batch: mean 0, Bessel std sqrt(2/3)
    expected = [1 / math.sqrt(2 / 3), 0.0, 0.0, -1 / math.sqrt(2 / 3)]
    assert learner.advantages(build_batch(batch)).tolist() == pytest.approx(expected, abs=1e-5)
    batch = retrospective_batch(rated, batch_id="7", normalize="task")
    assert [e.group_id for e in batch] == ["retro:7:a", "retro:7:a", "retro:7:b", "retro:7:b"]
    # per task: (1, 0) and (0, -1) each have mean +-0.5 and std sqrt(1/2)
    half = 0.5 / math.sqrt(0.5)
    assert learner.advantages(build_batch(batch)).tolist() == pytest.approx([half, -half, half, -half], abs=1e-5)
    with pytest.raises(ValueError, match="normalize"):
        retrospective_batch(rated, normalize="global")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- end to end on TextWorld


def _expert_actions(env, task: str) -> list[str]:
    env.reset(seed=0, options={"task": task})
    actions = []
    while (action := env.expert_action()) is not None:
        actions.append(action)
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            break
    return actions


def _demo(env, agent: ReflexionAgent, task: str, actions: list[str]) -> Episode:
    """Play ``actions`` through the agent's bookkeeping: an SFT episode shaped like a sampled one."""
    tok = agent.tokenizer
    obs, info = env.reset(seed=0, options={"task": task})
    state = agent.start(obs, info)
    episode = Episode(ENV_ID, task, group_id="demo")
    for action in actions:
        agent.prompt_ids(state)
        response = list(tok(f"<action>{action}</action>", add_special_tokens=False)["input_ids"]) + [tok.eos_token_id]
        sent = agent.act(state, Completion(response, None, "stop"))
        next_obs, reward, terminated, truncated, info = env.step(sent)
        episode.steps.append(Step(obs, sent, reward))
        obs = next_obs
        if terminated or truncated:
            break
        agent.observe(state, next_obs, info)
    episode.won = bool(info["won"])
    episode.transcripts = state.transcripts
    return episode


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tasks A and B, the base model directory, and an actor fine-tuned as the module docstring says."""
    from agentrl.testing import tiny_model
    from agentrl.training.sft import sft_update

    torch.manual_seed(0)
    env = agentrl.make("textworld", split="train", max_turns=MAX_TURNS)
    task_a, task_b = env.task_ids("train")[:2]
    experts = {task: _expert_actions(env, task) for task in (task_a, task_b)}
    texts = []
    for task in (task_a, task_b):
        obs, info = env.reset(seed=0, options={"task": task})
        texts += [obs, info["instruction"], *(f"<action>{a}</action>" for a in experts[task])]
    path = tiny_model(tmp_path_factory.mktemp("retro-base"), texts=texts * 5, vocab_size=2048)
    actor = HFPolicy(path, name="actor")
    agent = ReflexionAgent(actor.tokenizer, FORMAT, memory_size=2)
    demos = [_demo(env, agent, task_a, experts[task_a]), _demo(env, agent, task_b, ["look"] * MAX_TURNS)]
    for note in ("take the thing before you move", "you looped; open it and take it"):
        agent.memory = {task_b: [note]}
        demos.append(_demo(env, agent, task_b, experts[task_b]))
    agent.memory = {}
    env.close()
    assert [d.won for d in demos] == [True, False, True, True]
    sft_update(actor.model, demos, lr=5e-3, epochs=50, pad_token_id=actor.pad_id)
    actor.model.requires_grad_(False)
    return {"path": path, "actor": actor, "agent": agent, "a": task_a, "b": task_b, "expert_b": experts[task_b]}


def _collector(world) -> Collector:
    sampling = SamplingParams(max_new_tokens=12, temperature=0.0, stop=("</action>",))
    return Collector(
        lambda: agentrl.make("textworld", split="train", max_turns=MAX_TURNS),
        ModelActor(world["actor"], world["agent"], sampling), env_id=ENV_ID, max_parallel=2,
    )  # fmt: skip


def _first_prompt(episode: Episode) -> list[int]:
    return episode.turn_tokens()[0].prompt_ids


@pytest.mark.slow
def test_garbage_reflections_are_recorded_and_skipped(world):
    """A reflector allowed one token writes nothing usable: recorded, rated 0, never in the prompt."""
    base = HFPolicy(world["path"], name="base", seed=3)
    reflector = Reflector(base, base.tokenizer, sampling=SamplingParams(max_new_tokens=1, temperature=1.0))
    with _collector(world) as collector:
        report = run_trials(collector, world["agent"], reflector, [world["a"], world["b"]], trials=3)
    a, b = world["a"], world["b"]
    assert report.won == {a: [True], b: [False, False, False]}, report.won
    assert report.success_at() == [0.5, 0.5, 0.5]
    assert len(report.reflections) == 2 and all(r.task_id == b for r in report.reflections)  # none for A, none after the last
    for reflection in report.reflections:
        assert reflection.meta["usable"] is False and reflection.meta["problem"] is not None
        assert reflection.meta["rating"] == 0.0 and reflection.steps[0].reward == 0.0
    trials_b = [ep for ep in report.trial_episodes if ep.task_id == b]
    assert [ep.meta["reflections"] for ep in trials_b] == [[], [], []]
    assert _first_prompt(trials_b[1]) == _first_prompt(trials_b[0]) == _first_prompt(trials_b[2])


@pytest.mark.slow
def test_end_to_end_trials_store_ratings_and_update(world, tmp_path):
    """failed trial -> reflection -> next trial -> rating (hand-checked) -> store -> PPO update of the reflector."""
    from agentrl.store import open_store
    from agentrl.training.batch import build_batch
    from agentrl.training.config import LearnerConfig
    from agentrl.training.learner import Learner

    a, b = world["a"], world["b"]
    actor_before = {k: v.clone() for k, v in world["actor"].model.state_dict().items()}
    base = HFPolicy(world["path"], name="reflector", seed=1)
    reflector = Reflector(base, base.tokenizer, sampling=SamplingParams(max_new_tokens=12, temperature=1.0, stop_token_ids=()))
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    trial_run = store.start_run("retro/trials", env_id=ENV_ID, kind="train")
    reflection_run = store.start_run("retro/reflections", env_id=ENV_ID, kind="train")
    reports = []
    with _collector(world) as collector:
        for iteration in range(4):
            reports.append(run_trials(
                collector, world["agent"], reflector, [a, b], trials=4, store=store, trial_run=trial_run,
                reflection_run=reflection_run, chain_prefix=f"it{iteration}/",
            ))  # fmt: skip
    reflections = [r for report in reports for r in report.reflections]
    for report in reports:
        assert report.won[a] == [True]  # solved at once: no reflection, no rating
        wins_b = report.won[b]
        assert wins_b[-1] or len(wins_b) == 4
        trials_b = [ep for ep in report.trial_episodes if ep.task_id == b]
        for i, reflection in enumerate(report.reflections):
            assert reflection.task_id == b and reflection.meta["after_trial"] == i
            usable = reflection.meta["usable"]
            # hand-computed rating: B is solved exactly when a usable reflection is in the prompt
            assert reflection.meta["rating"] == (1.0 if usable else 0.0) == reflection.steps[0].reward
            assert report.returns[b][i + 1] - report.returns[b][i] == reflection.meta["rating"]
            text = reflection.steps[0].action
            next_prompt = world["actor"].tokenizer.decode(_first_prompt(trials_b[i + 1]))
            assert (text in next_prompt) == usable
            assert trials_b[i + 1].meta["reflections"] == ([text] if usable else [])
    usable_count = sum(r.meta["usable"] for r in reflections)
    assert 0 < usable_count < len(reflections), "the seeded reflector gives both usable and garbage reflections"

    # the store holds every trial and every rated reflection, linked by ids
    stored_trials = dict(store.iter_episodes(trial_run, with_ids=True))
    stored = store.read_episodes(reflection_run)
    assert len(stored_trials) == sum(len(r.trial_episodes) for r in reports)
    assert len(stored) == len(reflections)
    for reflection in stored:
        before = stored_trials[reflection.meta["trial_episode_id"]]
        after = stored_trials[reflection.meta["next_trial_episode_id"]]
        assert before.meta["trial"] + 1 == after.meta["trial"] and before.meta["chain"] == after.meta["chain"]
        assert reflection.steps[0].reward == after.episode_return - before.episode_return
        (transcript,) = reflection.transcripts
        assert sum(transcript.sampled) > 0 and transcript.logprobs is not None

    # PPO-clip update of the reflector from the stored batch; the actor stays frozen
    batch = retrospective_batch(stored, batch_id="1")
    config = LearnerConfig(lr=1e-4, total_steps=1, terms=["kl"], options={"kl": {"coef": 0.1}})
    learner = Learner(base.model, config, pad_token_id=base.pad_id)
    rows = build_batch(batch)
    advantages = learner.advantages(rows)
    ratings_in = torch.tensor([r.steps[0].reward for r in batch])
    expected = (ratings_in - ratings_in.mean()) / (ratings_in.std() + 1e-6)  # GRPO's eps
    assert advantages.tolist() == pytest.approx(expected.tolist(), abs=1e-5)
    before = torch.tensor(_response_logprobs(learner, rows))
    (metrics,) = learner.update(batch)
    after = torch.tensor(_response_logprobs(learner, rows))
    assert metrics["skipped"] is False and metrics["kl"] >= 0
    # one small policy-gradient step raises the advantage-weighted log-likelihood (first order)
    assert float((advantages * (after - before)).sum()) > 0
    for name, value in world["actor"].model.state_dict().items():
        assert torch.equal(value, actor_before[name]), f"actor weight {name} changed"
    store.close()


def _response_logprobs(learner, batch) -> list[float]:
    """Summed log-probability of each step's response under the learner's current model (in step order)."""
    from agentrl.training.batch import collate

    tensors = collate(batch, list(range(len(batch.sequences))), learner.pad_token_id, learner.device)
    with torch.no_grad():
        logp, _ = learner._score(learner.model, tensors)
    per_step = (logp[tensors["step_seq"], tensors["step_pos"]] * tensors["mask"]).sum(-1)
    order = {step: k for k, step in enumerate(tensors["steps"])}
    return [per_step[order[i]].item() for i in range(batch.n_steps)]


@pytest.mark.slow
def test_lora_update_moves_only_adapters(world):
    """LoRA (as in the paper): only the adapters move; the reflector's base weights do not."""
    from agentrl.training.config import LearnerConfig, LoRAConfig
    from agentrl.training.learner import Learner

    base = HFPolicy(world["path"], name="reflector", seed=2)
    frozen = {k: v.clone() for k, v in base.model.state_dict().items()}
    prompt = base.tokenizer("Outcome: the attempt failed.", add_special_tokens=False)["input_ids"]
    batch = retrospective_batch(
        [_reflection("b", 1.0, prompt, [11, 12, 13]), _reflection("b", 0.0, prompt, [14, 15, 16])], batch_id="lora"
    )
    learner = Learner(base.model, LearnerConfig(lr=1e-2, total_steps=1, terms=["kl"], options={"kl": {"coef": 0.1}},
                                                lora=LoRAConfig(r=1, alpha=4)))
    adapters = {n: p.detach().clone() for n, p in learner.model.named_parameters() if p.requires_grad}
    (metrics,) = learner.update(batch)
    assert metrics["skipped"] is False
    assert adapters and all(n.count("lora_") for n in adapters)
    assert any(not torch.equal(p, adapters[n]) for n, p in learner.model.named_parameters() if p.requires_grad)
    base_now = {n.replace("base_model.model.", "").replace(".base_layer", ""): p for n, p in learner.model.named_parameters()}
    for name, value in frozen.items():
        if name in base_now:
            assert torch.equal(base_now[name].detach(), value), f"base weight {name} changed under LoRA"


@pytest.mark.slow
def test_recipe_runs_on_textworld_and_reports_success_per_trial(world, tmp_path):
    """``agentrl train alfworld_retroformer`` pointed at TextWorld: evaluation, one iteration, saved reflector."""
    import json

    from agentrl.recipes import alfworld_retroformer as recipe
    from agentrl.training.config import LearnerConfig

    actor_dir = tmp_path / "actor"
    world["actor"].model.save_pretrained(actor_dir)
    world["actor"].tokenizer.save_pretrained(actor_dir)
    cfg = recipe.Config(
        actor_model=str(actor_dir), reflector_model=world["path"], output_dir=str(tmp_path), run_name="r",
        env="textworld", max_turns=MAX_TURNS, train_tasks=2, eval_split="train", eval_tasks=1, trials=2,
        iterations=1, tasks_per_iteration=2, actor_max_new_tokens=12, reflector_max_new_tokens=12, max_parallel=2,
        learner=LearnerConfig(lr=1e-3, total_steps=1),
    )  # fmt: skip
    summary = recipe.main(cfg)
    assert [e["iteration"] for e in summary["evaluations"]] == [0, 1]
    for evaluation in summary["evaluations"]:
        success = evaluation["success_at"]
        assert len(success) == 2 and success[0] <= success[1] and set(success) <= {0.0, 1.0}
    (stats,) = summary["iterations"]
    assert stats["tasks"] == 2 and stats["trained_reflections"] == stats["rated_reflections"] == stats["reflections"]
    assert json.loads((tmp_path / "r" / "summary.json").read_text()) == summary
    assert (tmp_path / "r" / "reflector" / "config.json").exists()
    from agentrl.store import open_store

    with open_store(f"sqlite:///{tmp_path / 'r' / 'store.db'}") as store:
        runs = {run.name: run.id for run in store.runs()}
        trials = store.read_episodes(runs["r/trials"])
        reflections = store.read_episodes(runs["r/reflections"])
    assert len(trials) == 2 + stats["reflections"]  # one first trial per task, one more per reflection
    assert len(reflections) == stats["reflections"]


@pytest.mark.slow
def test_cli_eval_reflexion_reports_success_per_trial(world, tmp_path):
    """``agentrl eval ENV --agent reflexion``: success@1..N in the JSON report, trials and reflections in the store."""
    import json
    import subprocess

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([installed_cli(), "eval", "textworld", *args], capture_output=True, text=True, timeout=600)

    missing = run("--agent", "reflexion")
    assert missing.returncode == 2 and "needs an actor model" in missing.stderr
    report_path, store_path = tmp_path / "report.json", tmp_path / "eval.db"
    done = run("--agent", "reflexion", "--model", world["path"], "--split", "train", "--episodes", "2", "--trials", "2",
               "--max-turns", "2", "--max-new-tokens", "8", "--output", str(report_path), "--store", str(store_path))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "success@2" in done.stdout
    report = json.loads(report_path.read_text())
    assert report["panel"] == [world["a"], world["b"]] and len(report["success_at"]) == 2
    # one reflection per failed trial that had a next trial; success@j from the per-trial wins
    assert report["reflections"] == sum(len(w) - 1 for w in report["won"].values())
    assert report["success_at"] == [sum(any(w[:j]) for w in report["won"].values()) / 2 for j in (1, 2)]
    from agentrl.store import open_store

    with open_store(f"sqlite:///{store_path}") as store:
        counts = sorted(store.count_episodes(run.id) for run in store.runs())
    assert counts == sorted([sum(len(w) for w in report["won"].values()), report["reflections"]])
