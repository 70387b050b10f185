"""The env contract and its checker: a well-behaved toy env passes, each deliberately broken one fails
with a message naming the rule it breaks."""

from __future__ import annotations

from typing import Any

import pytest

import agentrl
from agentrl.checker import EnvCheckError, check_env, check_reset_output, check_step_output
from agentrl.core import TextSpace, clean_action


class Countdown(agentrl.TextEnv):
    """Say the numbers from N down to 1; task id = N."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.closed = 0

    def task_ids(self, split: str | None = None) -> list[str]:
        return {"train": ["3", "4", "5"], "valid": ["2", "6"], "test": ["7"]}[split or self.split]

    def _reset_task(self, task_id: str):
        self.next = int(task_id)
        return f"Count down from {task_id}.", {"instruction": f"count down from {task_id}"}

    def _step(self, action: str):
        text, problem = clean_action(action)
        if problem or text != str(self.next):
            return f"Say {self.next}.", 0.0, False, {"invalid_action": True, "progress": self._progress()}
        self.next -= 1
        won = self.next == 0
        return ("Done!" if won else "Good."), float(won), won, {"won": won, "progress": self._progress()}

    def _progress(self) -> float:
        return 1.0 - self.next / int(self.task_id)

    def expert_action(self) -> str | None:
        return None if self.episode_over else str(self.next)

    def _close(self) -> None:
        self.closed += 1


def test_good_env_passes_and_plays_by_the_rules():
    env = Countdown(max_turns=5)
    check_env(env)
    assert env.closed == 1  # closed once, the second close was a no-op
    env = Countdown(max_turns=10)
    obs, info = env.reset(seed=1, options={"task": "3"})
    assert (obs, info["instruction"], info["turn"], info["won"]) == ("Count down from 3.", "count down from 3", 0, False)
    rewards = [env.step(a)[1] for a in ("3", "2")]
    obs, reward, terminated, truncated, info = env.step("1")
    assert rewards + [reward] == [0.0, 0.0, 1.0]
    assert (terminated, truncated, info["won"], info["progress"], info["turn"]) == (True, False, True, 1.0, 3)
    with pytest.raises(agentrl.EpisodeOver):
        env.step("0")


def test_turn_budget_truncates():
    env = Countdown(max_turns=2)
    env.reset(options={"task": "5"})
    assert env.step("5")[3] is False
    _, _, terminated, truncated, info = env.step("4")
    assert (terminated, truncated, info["turn"]) == (False, True, 2)


def test_seeded_task_choice_is_deterministic_and_from_the_split():
    env = Countdown(split="valid")
    picks = {env.reset(seed=s)[1]["task_id"] for s in range(20)}
    assert picks <= {"2", "6"} and len(picks) == 2
    assert env.reset(seed=7)[0] == env.reset(seed=7)[0]


def test_bad_constructor_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match="unknown split 'nope'; choose one of train, valid, test"):
        Countdown(split="nope")
    with pytest.raises(ValueError, match="max_turns must be >= 1"):
        Countdown(max_turns=0)
    with pytest.raises(ValueError, match="unknown reset option"):
        Countdown().reset(options={"tsk": "3"})


class NonStrObs(Countdown):
    def _reset_task(self, task_id):
        obs, info = super()._reset_task(task_id)
        return [obs], info


class MissingInfoKey(Countdown):
    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        del info["progress"]
        return obs, reward, terminated, truncated, info


class Nondeterministic(Countdown):
    calls = 0

    def _reset_task(self, task_id):
        Nondeterministic.calls += 1
        obs, info = super()._reset_task(task_id)
        return f"{obs} (visit {self.calls})", info


class RaisesOnGarbage(Countdown):
    def _step(self, action):
        if len(action) > 10_000:
            raise ValueError("action too long")
        return super()._step(action)


class RaisesOnUnicode(Countdown):
    def _step(self, action):
        action.encode("ascii")
        return super()._step(action)


class BadDoubleClose(Countdown):
    def close(self):
        if getattr(self, "_gone", False):
            raise RuntimeError("already closed")
        self._gone = True


class NoEpisodeOver(Countdown):
    def step(self, action):
        self._done = False
        return super().step(action)


class NeverTruncates(Countdown):
    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        self._done = False
        return obs, reward, terminated, False, info


class ProgressOutOfRange(Countdown):
    def _step(self, action):
        obs, reward, terminated, info = super()._step(action)
        info["progress"] = 2.0
        return obs, reward, terminated, info


@pytest.mark.parametrize(
    ("env_cls", "rule"),
    [
        (NonStrObs, "obs-type"),
        (MissingInfoKey, "info-keys"),
        (Nondeterministic, "seed-determinism"),
        (RaisesOnGarbage, "garbage-action"),
        (RaisesOnUnicode, "garbage-action"),
        (BadDoubleClose, "double-close"),
        (NoEpisodeOver, "episode-over"),
        (NeverTruncates, "max-turns"),
        (ProgressOutOfRange, "info-keys"),
    ],
)
def test_checker_names_the_broken_rule(env_cls, rule):
    with pytest.raises(EnvCheckError, match=rf"^\[{rule}\]"):
        check_env(env_cls(max_turns=5))


class WrongTurn(Countdown):
    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        info["turn"] += 1
        return obs, reward, terminated, truncated, info


class NanReward(Countdown):
    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, float("nan"), terminated, truncated, info


class BlankIsValid(Countdown):
    def _step(self, action):
        obs, reward, terminated, info = super()._step(action)
        info["invalid_action"] = False
        return obs, reward, terminated, info


@pytest.mark.parametrize(
    ("env_cls", "action", "rule"),
    [(NeverTruncates, "x", "max-turns"), (WrongTurn, "3", "info-keys"), (NanReward, "3", "step-api"),
     (BlankIsValid, " \n", "garbage-action"), (ProgressOutOfRange, "3", "info-keys")],
)  # fmt: skip
def test_per_turn_checks_name_the_broken_rule(env_cls, action, rule):
    env = env_cls(max_turns=1)
    check_reset_output(env, env.reset(options={"task": "3"}))
    with pytest.raises(EnvCheckError, match=rf"^\[{rule}\]"):
        check_step_output(env, env.step(action), action=action, turn=1)


def test_per_turn_checks_pass_a_good_episode():
    env = Countdown(max_turns=2)
    check_reset_output(env, env.reset(options={"task": "5"}))
    assert check_step_output(env, env.step("5"), action="5", turn=1) is False
    assert check_step_output(env, env.step(""), action="", turn=2) is True  # truncated at max_turns


def test_text_space_accepts_any_string():
    space = TextSpace()
    assert space.contains("ß→中文 🤖\x00\n")
    assert not space.contains(b"bytes") and not space.contains(None)
    assert isinstance(space.sample(), str)


@pytest.mark.parametrize(
    ("raw", "text", "problem"),
    [
        ("  go   north \n", "go north", None),
        ("\x00\x1b[31mtake\tkey\x7f", "[31mtake key", None),
        ("", "", "empty action"),
        ("\n\t ", "", "empty action"),
        (None, "", "action must be a string, got NoneType"),
        ("a" * 2000, "a" * 1000, "action is longer than 1000 characters"),
    ],
)
def test_clean_action(raw, text, problem):
    assert clean_action(raw) == (text, problem)
