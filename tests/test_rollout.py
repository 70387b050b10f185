"""The collector on real TextWorld games with a real (tiny) transformers policy.

The drift-free check is end to end: the ids a learner gets from the stored episodes (concat layout
and per-step rows) are compared with the ids the policy was actually called with and the ids it
returned, turn by turn, and the behaviour logprobs with a fresh forward over the training sequence.
"""

from __future__ import annotations

import pytest

import agentrl

torch = pytest.importorskip("torch")
pytest.importorskip("textworld")

from agentrl.agents.llm import ACTION_STOP, LLMAgent, prompt_format_for  # noqa: E402
from agentrl.policies import SamplingParams  # noqa: E402
from agentrl.policies.hf import HFPolicy  # noqa: E402
from agentrl.rollout import Collector, LayoutError, concat_sequence, per_step_rows, training_rows  # noqa: E402

ENV_ID = "agentrl/TextWorld-v0"
TASKS = ["easy/100000", "easy/100001"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class RecordingPolicy:
    """A real policy that also keeps every batch it was given and every completion it returned."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []
        self.name, self.version, self.max_context = inner.name, inner.version, inner.max_context

    def generate(self, prompts, sampling):
        completions = self.inner.generate(prompts, sampling)
        self.calls.append(([list(p) for p in prompts], completions))
        return completions


def make_env(max_turns: int = 3):
    return lambda: agentrl.make("textworld", split="valid", max_turns=max_turns)


def collect(policy, *, layout="concat", max_turns=3, max_new_tokens=10, group_size=2, **kwargs):
    agent = LLMAgent(policy.inner.tokenizer if hasattr(policy, "inner") else policy.tokenizer, prompt_format_for("textworld"), layout=layout)
    sampling = SamplingParams(max_new_tokens=max_new_tokens, temperature=1.0, stop=(ACTION_STOP,), return_entropies=True)
    with Collector(make_env(max_turns), policy, agent, env_id=ENV_ID, sampling=sampling, split="valid", **kwargs) as collector:
        episodes = collector.run(TASKS, group_size=group_size, seed=5)
        return episodes, collector.stats


@pytest.fixture(scope="module")
def hf_policy(tiny_chat_model):
    return HFPolicy(tiny_chat_model, device="cpu", seed=0)


@pytest.fixture(scope="module")
def rollout(hf_policy):
    policy = RecordingPolicy(hf_policy)
    episodes, stats = collect(policy, max_parallel=4)
    return policy, episodes, stats


def test_groups_seeds_and_one_batched_generate_per_turn(rollout):
    policy, episodes, stats = rollout
    assert len(episodes) == 4
    assert sorted((ep.task_id, ep.seed, ep.group_id) for ep in episodes) == [
        ("easy/100000", 5, "easy/100000#0"), ("easy/100000", 6, "easy/100000#0"),
        ("easy/100001", 5, "easy/100001#1"), ("easy/100001", 6, "easy/100001#1"),
    ]  # fmt: skip
    # A random tiny model never wins in 3 turns: every episode runs 3 turns, all 4 in each batch.
    assert all(ep.turns == 3 and ep.truncated and not ep.won and ep.error is None for ep in episodes)
    assert stats["generate_calls"] == 3 == len(policy.calls)
    assert [len(prompts) for prompts, _ in policy.calls] == [4, 4, 4]
    assert stats["tokens_generated"] == sum(len(s.response_ids) for ep in episodes for s in ep.steps)


def test_steps_carry_exactly_what_the_policy_saw_and_sampled(rollout):
    policy, episodes, _ = rollout
    seen = [(p, c) for prompts, completions in policy.calls for p, c in zip(prompts, completions, strict=True)]
    for ep in episodes:
        assert ep.meta["layout"] == "concat" and ep.agent == policy.name
        for step in ep.steps:
            matches = [c for p, c in seen if p == step.prompt_ids and c.token_ids == step.response_ids]
            assert len(matches) == 1
            completion = matches[0]
            assert step.logprobs == completion.logprobs and step.entropies == completion.entropies
            assert step.loss_mask == [1] * len(step.response_ids)
            assert step.policy_version == 0 and step.generation_seconds > 0 and step.env_seconds > 0
            assert step.info["finish_reason"] == completion.finish_reason


def test_concat_training_sequence_equals_seen_and_sampled_ids(rollout, hf_policy):
    _, episodes, _ = rollout
    for ep in episodes:
        row = concat_sequence(ep)
        last = ep.steps[-1]
        assert row.input_ids == last.prompt_ids + last.response_ids
        for turn, step in enumerate(ep.steps):
            start = len(step.prompt_ids)
            assert row.input_ids[:start] == step.prompt_ids  # what the policy saw, verbatim
            assert row.input_ids[start : start + len(step.response_ids)] == step.response_ids  # what it sampled
            assert row.loss_mask[start : start + len(step.response_ids)] == [1] * len(step.response_ids)
            assert row.turns[start : start + len(step.response_ids)] == [turn] * len(step.response_ids)
        assert sum(row.loss_mask) == sum(len(s.response_ids) for s in ep.steps)
        # A learner's forward over the sequence reproduces the behaviour logprobs (temperature 1).
        ids = torch.tensor([row.input_ids])
        with torch.no_grad():
            logp = torch.log_softmax(hf_policy.model(input_ids=ids).logits[0, :-1].double(), -1)
        recomputed = logp.gather(-1, ids[0, 1:, None]).squeeze(-1)
        positions = [i for i, m in enumerate(row.loss_mask) if m]
        expected = torch.tensor([row.logprobs[i] for i in positions], dtype=torch.float64)
        torch.testing.assert_close(recomputed[[i - 1 for i in positions]], expected, atol=5e-5, rtol=0)
        assert training_rows(ep)[0].input_ids == row.input_ids


def test_per_step_rows_are_prompt_plus_response(rollout):
    _, episodes, _ = rollout
    rows = per_step_rows(episodes[0])
    assert len(rows) == episodes[0].turns
    for row, step in zip(rows, episodes[0].steps, strict=True):
        assert row.input_ids == step.prompt_ids + step.response_ids
        assert row.loss_mask == [0] * len(step.prompt_ids) + [1] * len(step.response_ids)


def test_episodes_round_trip_through_the_store(rollout, tmp_path):
    from agentrl.store import open_store

    _, episodes, _ = rollout
    with open_store(f"sqlite:///{tmp_path / 'runs.db'}") as store:
        run_id = store.start_run("rollout-test", env_id=ENV_ID, config={}, kind="eval")
        for ep in episodes:
            store.write_episode(run_id, ep)
        back = sorted(store.read_episodes(run_id), key=lambda e: (e.task_id, e.seed))
    for original, stored in zip(sorted(episodes, key=lambda e: (e.task_id, e.seed)), back, strict=True):
        assert [s.prompt_ids for s in stored.steps] == [s.prompt_ids for s in original.steps]
        assert [s.response_ids for s in stored.steps] == [s.response_ids for s in original.steps]
        assert concat_sequence(stored).input_ids == concat_sequence(original).input_ids


def test_context_cap_ends_episodes_as_truncated(hf_policy):
    policy = RecordingPolicy(hf_policy)
    agent = LLMAgent(hf_policy.tokenizer, prompt_format_for("textworld"))
    env = make_env()()
    obs, info = env.reset(options={"task": TASKS[0]})
    env.close()
    first = len(agent.prompt_ids(agent.start(obs, info)))
    # Room for the first turn (prompt + 10 new tokens) but not for the second prompt.
    episodes, _ = collect(policy, group_size=1, max_parallel=2, max_context=first + 10 + 5)
    by_task = {ep.task_id: ep for ep in episodes}
    ep = by_task[TASKS[0]]
    assert ep.turns == 1 and ep.truncated and ep.meta["truncated_reason"] == "context_length"
    assert all(len(s.prompt_ids) + 10 <= first + 15 for e in episodes for s in e.steps)


def test_garbage_and_runaway_output_become_invalid_turns(hf_policy):
    """A random model never closes an action tag in 3 tokens: invalid actions, the run goes on."""
    policy = RecordingPolicy(hf_policy)
    episodes, _ = collect(policy, max_new_tokens=3, group_size=1, max_parallel=2)
    for ep in episodes:
        assert ep.turns == 3 and ep.error is None
        for step in ep.steps:
            assert step.info["finish_reason"] == "length" and len(step.response_ids) == 3
            assert step.info["parse_error"] and step.info["invalid_action"] and step.action == ""


def test_reasoning_template_rollouts_are_stored_per_step(tiny_reasoning_model):
    policy = RecordingPolicy(HFPolicy(tiny_reasoning_model, device="cpu"))
    episodes, _ = collect(policy, group_size=1, max_parallel=2, max_turns=2)
    for ep in episodes:
        assert ep.meta["layout"] == "per_step" and "rewrites" in ep.meta["layout_reason"]
        rows = training_rows(ep)
        assert [r.input_ids for r in rows] == [s.prompt_ids + s.response_ids for s in ep.steps]
    with pytest.raises(LayoutError):
        for ep in episodes:  # a per-step episode is never silently packed into one sequence
            concat_sequence(ep)


def test_env_failure_is_recorded_and_the_run_goes_on(hf_policy):
    policy = RecordingPolicy(hf_policy)
    agent = LLMAgent(hf_policy.tokenizer, prompt_format_for("textworld"))
    sampling = SamplingParams(max_new_tokens=4)
    with Collector(make_env(2), policy, agent, env_id=ENV_ID, sampling=sampling, max_parallel=2) as collector:
        episodes = collector.run(["easy/100000", "no-such-task"], seed=0)
    by_task = {ep.task_id: ep for ep in episodes}
    assert "unknown TextWorld task" in by_task["no-such-task"].error and by_task["no-such-task"].turns == 0
    assert by_task["easy/100000"].error is None and by_task["easy/100000"].turns == 2


def test_admissible_only_agents_play_only_listed_actions(hf_policy):
    """Constrained decoding: an untrained model's every action is admissible, sampled as the listed ids."""
    tokenizer = hf_policy.tokenizer
    agent = LLMAgent(tokenizer, prompt_format_for("textworld"), layout="per_step", admissible_only=True)
    sampling = SamplingParams(max_new_tokens=24, temperature=1.0, stop=(ACTION_STOP,), return_entropies=True)
    with Collector(make_env(3), hf_policy, agent, env_id=ENV_ID, sampling=sampling, split="valid") as collector:
        episodes = collector.run(TASKS, group_size=2, seed=1)
    assert len(episodes) == 4
    for ep in episodes:
        shown = ep.meta["reset_info"]["admissible_actions"]
        for step in ep.steps:
            assert step.action in shown and not step.info["invalid_action"] and not step.info.get("parse_error")
            assert step.response_ids == tokenizer(f"<action>{step.action}</action>", add_special_tokens=False)["input_ids"]
            shown = step.info["admissible_actions"]
    with pytest.raises(ValueError, match="no constrained decoding"):
        Collector(make_env(3), RecordingPolicy(hf_policy), agent, env_id=ENV_ID, sampling=sampling)
