"""The episode runner on real TextWorld games with a real (tiny) transformers policy.

The drift-free check is end to end and runs the learner's own code: the sequences and steps the
learner builds from the episodes (:func:`agentrl.training.batch.build_batch`) are compared with the
ids the policy was actually called with and the ids it returned, turn by turn, and the behaviour
logprobs with the learner's own scoring pass over the packed sequence.
"""

from __future__ import annotations

import pytest

import agentrl

torch = pytest.importorskip("torch")
pytest.importorskip("textworld")

from agentrl.agents.llm import ACTION_STOP, LLMAgent, prompt_format_for  # noqa: E402
from agentrl.policies import SamplingParams  # noqa: E402
from agentrl.policies.hf import HFPolicy  # noqa: E402
from agentrl.rollout import Collector, ModelActor  # noqa: E402
from agentrl.training.batch import build_batch, collate  # noqa: E402
from agentrl.training.logprobs import token_logprobs_entropy  # noqa: E402
from agentrl.trajectory import ALLOWED  # noqa: E402

ENV_ID = "agentrl/TextWorld-v0"
TASKS = ["easy/100000", "easy/100001"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class RecordingPolicy:
    """A real policy that also keeps every batch it was given and every completion it returned."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []
        self.name, self.version, self.max_context = inner.name, inner.version, inner.max_context
        self.capabilities = inner.capabilities

    def generate(self, prompts, sampling, **kwargs):
        completions = self.inner.generate(prompts, sampling, **kwargs)
        self.calls.append(([list(p) for p in prompts], completions))
        return completions


def make_env(max_turns: int = 3):
    return lambda: agentrl.make("textworld", split="valid", max_turns=max_turns)


def collect(policy, *, layout="concat", max_turns=3, max_new_tokens=10, group_size=2, max_context=None, **kwargs):
    tokenizer = policy.inner.tokenizer if hasattr(policy, "inner") else policy.tokenizer
    agent = LLMAgent(tokenizer, prompt_format_for("textworld"), layout=layout)
    sampling = SamplingParams(max_new_tokens=max_new_tokens, temperature=1.0, stop=(ACTION_STOP,), return_entropies=True)
    actor = ModelActor(policy, agent, sampling, max_context=max_context)
    with Collector(make_env(max_turns), actor, env_id=ENV_ID, split="valid", **kwargs) as collector:
        episodes = collector.run(TASKS, group_size=group_size, seed=5)
        return episodes, {**collector.stats, **actor.stats}


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
    assert stats["tokens_generated"] == sum(ep.tokens_generated for ep in episodes)
    assert stats["tokens_generated"] == sum(c.num_tokens for _, cs in policy.calls for c in cs)


def test_transcripts_carry_exactly_what_the_policy_saw_and_sampled(rollout):
    policy, episodes, _ = rollout
    seen = [(p, c) for prompts, completions in policy.calls for p, c in zip(prompts, completions, strict=True)]
    for ep in episodes:
        assert ep.meta["layout"] == "concat" and ep.agent == policy.name
        (transcript,) = ep.transcripts  # concat: one transcript for the whole episode
        views = ep.turn_tokens()
        assert sorted(views) == list(range(ep.turns))
        for turn, step in enumerate(ep.steps):
            view = views[turn]
            matches = [c for p, c in seen if p == view.prompt_ids and c.token_ids == view.response_ids]
            assert len(matches) == 1
            completion = matches[0]
            assert view.logprobs == completion.logprobs and view.entropies == completion.entropies
            assert view.loss_mask == [1] * len(view.response_ids)
            assert step.policy_version == 0 and step.generation_seconds > 0 and step.env_seconds > 0
            assert step.info["finish_reason"] == completion.finish_reason
        # Memory is linear: the prompts are not copied per step, the transcript is the last prompt + response.
        last = views[ep.turns - 1]
        assert transcript.ids == last.prompt_ids + last.response_ids


def test_the_learner_packs_the_transcripts_verbatim_and_rescores_the_behaviour_logprobs(rollout, hf_policy):
    policy, episodes, _ = rollout
    batch = build_batch(episodes)
    assert batch.sequences == [t.ids for ep in episodes for t in ep.transcripts]
    sampled = [c.token_ids for _, cs in policy.calls for c in cs]
    assert sorted(map(tuple, batch.response_ids)) == sorted(map(tuple, sampled))
    for step, response in enumerate(batch.response_ids):
        sequence, start = batch.sequences[batch.step_seq[step]], batch.step_start[step]
        assert sequence[start : start + len(response)] == response
    # The learner's own collate + scoring pass reproduces the behaviour log-probs (temperature 1).
    tensors = collate(batch, range(len(batch.sequences)), hf_policy.pad_id, torch.device("cpu"))
    with torch.no_grad():
        logp, _ = token_logprobs_entropy(hf_policy.model, tensors["input_ids"], tensors["attention_mask"], tensors["targets"])
    rescored = logp[tensors["step_seq"], tensors["step_pos"]]
    for k, step in enumerate(tensors["steps"]):
        n = len(batch.response_ids[step])
        torch.testing.assert_close(rescored[k, :n], torch.tensor(batch.behaviour_logprobs[step]), atol=5e-5, rtol=0)


def test_episodes_round_trip_through_the_store(rollout, tmp_path):
    from agentrl.store import open_store

    _, episodes, _ = rollout
    with open_store(f"sqlite:///{tmp_path / 'runs.db'}") as store:
        run_id = store.start_run("rollout-test", env_id=ENV_ID, config={}, kind="eval")
        for ep in episodes:
            store.write_episode(run_id, ep)
        back = sorted(store.read_episodes(run_id), key=lambda e: (e.task_id, e.seed))
    for original, stored in zip(sorted(episodes, key=lambda e: (e.task_id, e.seed)), back, strict=True):
        assert stored.transcripts == original.transcripts
        assert stored.steps == original.steps


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
    assert all(len(v.prompt_ids) + 10 <= first + 15 for e in episodes for v in e.turn_tokens().values())


def test_garbage_and_runaway_output_become_invalid_turns(hf_policy):
    """A random model never closes an action tag in 3 tokens: invalid actions, the run goes on."""
    policy = RecordingPolicy(hf_policy)
    episodes, _ = collect(policy, max_new_tokens=3, group_size=1, max_parallel=2)
    for ep in episodes:
        assert ep.turns == 3 and ep.error is None
        views = ep.turn_tokens()
        for turn, step in enumerate(ep.steps):
            assert step.info["finish_reason"] == "length" and len(views[turn].response_ids) == 3
            assert step.info["parse_error"] and step.info["invalid_action"] and step.action == ""


def test_reasoning_template_rollouts_have_one_transcript_per_turn(tiny_reasoning_model):
    policy = RecordingPolicy(HFPolicy(tiny_reasoning_model, device="cpu"))
    episodes, _ = collect(policy, group_size=1, max_parallel=2, max_turns=2)
    calls = {tuple(p): c.token_ids for prompts, cs in policy.calls for p, c in zip(prompts, cs, strict=True)}
    for ep in episodes:
        assert ep.meta["layout"] == "per_step" and "rewrites" in ep.meta["layout_reason"]
        assert len(ep.transcripts) == ep.turns
        for transcript, view in zip(ep.transcripts, ep.turn_tokens().values(), strict=True):
            assert transcript.ids == view.prompt_ids + view.response_ids
            assert calls[tuple(view.prompt_ids)] == view.response_ids  # the fresh prompt the policy saw
    batch = build_batch(episodes)  # never silently packed into one sequence
    assert len(batch.sequences) == sum(ep.turns for ep in episodes)


def test_env_failure_is_recorded_and_the_run_goes_on(hf_policy):
    policy = RecordingPolicy(hf_policy)
    agent = LLMAgent(hf_policy.tokenizer, prompt_format_for("textworld"))
    sampling = SamplingParams(max_new_tokens=4)
    with Collector(make_env(2), ModelActor(policy, agent, sampling), env_id=ENV_ID, max_parallel=2) as collector:
        episodes = collector.run(["easy/100000", "no-such-task"], seed=0)
    by_task = {ep.task_id: ep for ep in episodes}
    assert "unknown TextWorld task" in by_task["no-such-task"].error and by_task["no-such-task"].turns == 0
    assert by_task["easy/100000"].error is None and by_task["easy/100000"].turns == 2


class NoConstraints(RecordingPolicy):
    def __init__(self, inner):
        super().__init__(inner)
        self.capabilities = agentrl.policies.Capabilities(entropies=True)


def test_admissible_only_agents_play_only_listed_actions(hf_policy):
    """Constrained decoding: an untrained model's every action is admissible, sampled as the listed ids."""
    tokenizer = hf_policy.tokenizer
    agent = LLMAgent(tokenizer, prompt_format_for("textworld"), layout="per_step", admissible_only=True)
    sampling = SamplingParams(max_new_tokens=24, temperature=1.0, stop=(ACTION_STOP,), return_entropies=True)
    with Collector(make_env(3), ModelActor(hf_policy, agent, sampling), env_id=ENV_ID, split="valid") as collector:
        episodes = collector.run(TASKS, group_size=2, seed=1)
    assert len(episodes) == 4
    for ep in episodes:
        shown = ep.meta["reset_info"]["admissible_actions"]
        views = ep.turn_tokens()
        for turn, step in enumerate(ep.steps):
            assert step.action in shown and not step.info["invalid_action"] and not step.info.get("parse_error")
            response = views[turn].response_ids
            assert response == tokenizer(f"<action>{step.action}</action>", add_special_tokens=False)["input_ids"]
            transcript = ep.transcripts[views[turn].transcript]
            start = len(views[turn].prompt_ids)
            for j, token in enumerate(response):  # the allowed set of every sampled token travels with it
                allowed = transcript.extras[ALLOWED][start + j]
                assert token in allowed
                assert transcript.loss_mask[start + j] == int(len(allowed) > 1)  # forced tokens carry no gradient
            shown = step.info["admissible_actions"]
    with pytest.raises(ValueError, match="no constrained decoding"):
        ModelActor(NoConstraints(hf_policy), agent, sampling)
