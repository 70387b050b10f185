"""LLM agent: action parser, prompt formats, and the token layouts on a real TextWorld episode.

The completions here are the TextWorld expert's commands written as the model would write them
(``<action>CMD</action>`` then the end-of-turn token), tokenised by the real tokenizer: so the
episode is won and every turn's ids can be checked against the chat template's own rendering.
"""

from __future__ import annotations

import pytest

import agentrl
from agentrl.agents.llm import (
    FORMAT_REMINDER,
    LLMAgent,
    parse_action,
    prompt_format_for,
    template_rewrites_history,
)
from agentrl.policies.base import Completion
from agentrl.testing import CHATML_TEMPLATE, tiny_tokenizer

pytest.importorskip("textworld")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<action>open fridge</action>", "open fridge"),
        ("I think so. <action> take   apple\n</action> trailing", "take apple"),
        ("<action>go north</action><action>go south</action>", "go north"),
        ("<action></action>", None),
        ("<action>never closed", None),
        ("no tags at all", None),
        ("", None),
    ],
)
def test_parse_action(text, expected):
    assert parse_action(text) == expected


def test_prompt_formats_per_env():
    assert "text adventure" in prompt_format_for("agentrl/TextWorld-v0").system
    assert "household" in prompt_format_for("alfworld").system
    assert "science" in prompt_format_for("agentrl/ScienceWorld-v0").system
    assert prompt_format_for("agentrl/MLE-v0").list_admissible is False
    assert "<action>" in prompt_format_for("unknown-env").system


@pytest.fixture(scope="module")
def tokenizer(tiny_chat_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_chat_model)


def expert_completion(tokenizer, command: str, think: str = "") -> list[int]:
    """What a model that answers ``command`` would have sampled: the reply, then the end-of-turn token."""
    return tokenizer(f"{think}<action>{command}</action>", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def sampled(ids: list[int]) -> Completion:
    """A completion of ``ids`` with made-up behaviour log-probs (-0.5 each)."""
    return Completion(list(ids), [-0.5] * len(ids), "stop")


def play_expert(agent: LLMAgent, tokenizer, task: str = "easy/100000", think: str = ""):
    env = agentrl.make("textworld", split="valid", max_turns=12)
    try:
        obs, info = env.reset(options={"task": task})
        state = agent.start(obs, info)
        prompts, responses, done = [], [], False
        while not done:
            prompt = agent.prompt_ids(state)
            response = expert_completion(tokenizer, env.expert_action(), think)
            prompts.append(prompt)
            responses.append(response)
            action = agent.act(state, sampled(response), version=3)
            obs, _, terminated, truncated, info = env.step(action)
            done = terminated or truncated
            if not done:
                agent.observe(state, obs, info)
        return state, prompts, responses, info
    finally:
        env.close()


def test_concat_layout_extends_prompts_by_sampled_ids_and_template_delta(tokenizer):
    agent = LLMAgent(tokenizer, prompt_format_for("textworld"))
    state, prompts, responses, info = play_expert(agent, tokenizer)
    assert info["won"] and len(prompts) >= 2
    assert state.layout == "concat"
    for turn in range(1, len(prompts)):
        before, after, response = prompts[turn - 1], prompts[turn], responses[turn - 1]
        assert after[: len(before)] == before  # prefix property
        assert after[len(before) : len(before) + len(response)] == response  # sampled ids verbatim
    # The ids stand for exactly what the chat template renders for the conversation so far.
    from agentrl.agents.llm import Turn

    shown = [*state.turns[:-1], Turn(state.turns[-1].user)]  # the last reply came after the last prompt
    messages = agent._messages(shown)
    assert tokenizer.decode(prompts[-1]) == tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    first_user = state.turns[0].user
    assert first_user.startswith("Task: ") and "Admissible actions: " in first_user
    # The episode's token side is ONE transcript: the last prompt plus the last sampled ids, with
    # per-token fields marking exactly the sampled ids of every turn.
    (transcript,) = state.transcripts
    assert transcript.ids == prompts[-1] + responses[-1]
    starts = [len(p) for p in prompts]
    expected_sampled = [0] * len(transcript.ids)
    for start, response in zip(starts, responses, strict=True):
        expected_sampled[start : start + len(response)] = [1] * len(response)
    assert transcript.sampled == expected_sampled == transcript.loss_mask
    assert [lp for lp, s in zip(transcript.logprobs, transcript.sampled, strict=True) if s] == [-0.5] * sum(map(len, responses))
    assert set(v for v, s in zip(transcript.versions, transcript.sampled, strict=True) if s) == {3}
    assert all(v == -1 for v, s in zip(transcript.versions, transcript.sampled, strict=True) if not s)
    for turn, start in enumerate(starts):  # turn t's tokens: its prompt delta, then its response
        first = starts[turn - 1] + len(responses[turn - 1]) if turn else 0
        assert transcript.turns[first : start + len(responses[turn])] == [turn] * (start + len(responses[turn]) - first)
    assert transcript.entropies is None  # the completions carried none: the field is dropped, not zero-filled


def test_unparseable_output_becomes_an_empty_action_and_a_reminder(tokenizer):
    agent = LLMAgent(tokenizer, prompt_format_for("textworld"))
    env = agentrl.make("textworld", split="valid", max_turns=5)
    try:
        obs, info = env.reset(options={"task": "easy/100000"})
        state = agent.start(obs, info)
        garbage = tokenizer("open the fridge please", add_special_tokens=False)["input_ids"]
        before = agent.prompt_ids(state)
        action = agent.act(state, sampled(garbage))
        assert action == "" and state.last_parse_ok is False
        obs, reward, terminated, truncated, info = env.step(action)
        assert info["invalid_action"] and reward == 0.0 and not terminated
        agent.observe(state, obs, info)
        assert state.turns[-1].user.startswith(FORMAT_REMINDER)
        after = agent.prompt_ids(state)
        # The model did not sample an end-of-turn token: the template's own end of turn is in the delta.
        assert after[: len(before) + len(garbage)] == before + garbage
        assert tokenizer.decode(after[len(before) + len(garbage) :]).startswith("<|im_end|>\n<|im_start|>user\n")
    finally:
        env.close()


def test_reasoning_template_is_detected_and_played_per_step(tiny_reasoning_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_reasoning_model)
    assert template_rewrites_history(tokenizer)
    agent = LLMAgent(tokenizer, prompt_format_for("textworld"), layout="concat")
    assert agent.layout == "per_step" and "rewrites" in agent.layout_reason
    state, prompts, responses, info = play_expert(agent, tokenizer, think="<think>plan</think>")
    assert info["won"] and state.layout == "per_step"
    # Each per-step prompt is the fresh template rendering: earlier <think> blocks are gone, so the
    # previous prompt + sampled ids is NOT a prefix (the reason concat is refused for this template).
    rendered = tokenizer.decode(prompts[-1])
    assert "<think>" not in rendered
    assert prompts[1][: len(prompts[0]) + len(responses[0])] != prompts[0] + responses[0]
    # One transcript per turn: exactly the prompt the policy saw and what it sampled.
    assert [t.ids for t in state.transcripts] == [p + r for p, r in zip(prompts, responses, strict=True)]
    assert [t.turns[0] for t in state.transcripts] == list(range(len(prompts)))


def test_template_that_rewrites_only_some_turns_is_caught_per_turn(tokenizer):
    trimming = CHATML_TEMPLATE.replace("message['content']", "(message['content'] | trim)")
    tok = tiny_tokenizer(chat_template=trimming)
    assert not template_rewrites_history(tok)  # the probe's reply has no surrounding whitespace
    agent = LLMAgent(tok, prompt_format_for("textworld"))
    state = agent.start("You are in a room.", {"instruction": "open the box", "admissible_actions": ["open box"]})
    reply = tok("<action>open box</action>  ", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    agent.act(state, sampled(reply))
    agent.observe(state, "The box is open.", {"admissible_actions": ["close box"]})
    assert state.layout == "per_step" and "changed an earlier turn" in state.layout_reason
    assert tok.decode(agent.prompt_ids(state)).endswith("Admissible actions: close box<|im_end|>\n<|im_start|>assistant\n")


def test_per_step_history_window_keeps_the_task_and_last_k_turns(tokenizer):
    agent = LLMAgent(tokenizer, prompt_format_for("textworld"), layout="per_step", history=1)
    state = agent.start("obs-0", {"instruction": "find the key"})
    for turn in range(1, 4):
        agent.prompt_ids(state)
        agent.act(state, sampled(expert_completion(tokenizer, f"cmd-{turn}")))
        agent.observe(state, f"obs-{turn}", {})
    messages = agent.messages(state)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[1]["content"] == "Task: find the key\n\nobs-2"
    assert messages[2]["content"] == "<action>cmd-3</action>"
    assert messages[3]["content"] == "obs-3"
    assert tokenizer.decode(agent.prompt_ids(state)) == tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )


def test_per_step_act_without_the_prompt_it_answers_is_refused(tokenizer):
    agent = LLMAgent(tokenizer, prompt_format_for("textworld"), layout="per_step")
    state = agent.start("obs-0", {"instruction": "find the key"})
    with pytest.raises(ValueError, match="prompt_ids"):  # the transcript must record what the policy saw
        agent.act(state, sampled(expert_completion(tokenizer, "look")))


def test_agent_needs_a_chat_template():
    tok = tiny_tokenizer()
    tok.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        LLMAgent(tok)


def test_admissible_only_choices_are_the_listed_actions_as_a_demonstration_tokenises_them(tokenizer):
    from dataclasses import replace

    agent = LLMAgent(tokenizer, replace(prompt_format_for("textworld"), max_admissible=5), admissible_only=True)
    env = agentrl.make("textworld", split="valid", max_turns=4)
    try:
        obs, info = env.reset(options={"task": "easy/100000"})
        state = agent.start(obs, info)
        listed = info["admissible_actions"][:5]
        assert agent.choices(state) == [expert_completion(tokenizer, a)[:-1] for a in listed]
        prompt_text = tokenizer.decode(agent.prompt_ids(state))
        assert "Admissible actions: " + ", ".join(listed) in prompt_text
        action = agent.act(state, sampled(expert_completion(tokenizer, env.expert_action())))
        obs, _, _, _, info = env.step(action)
        agent.observe(state, obs, info)
        assert agent.choices(state) == [expert_completion(tokenizer, a)[:-1] for a in info["admissible_actions"][:5]]
    finally:
        env.close()
    assert LLMAgent(tokenizer, prompt_format_for("textworld")).choices(state) is None  # free decoding
    with pytest.raises(ValueError, match="admissible_only"):
        LLMAgent(tokenizer, prompt_format_for("mle"), admissible_only=True)  # MLE lists no actions
