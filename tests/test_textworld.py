"""TextWorld on the real engine: generated games, panels, expert, rewards, bad input."""

from __future__ import annotations

import pytest

import agentrl
from agentrl.agents import ExpertAgent, RandomAgent
from agentrl.environments.textworld.env import PANELS, game_path, generate_games, parse_task_id, strip_banner
from agentrl.evaluation import evaluate


@pytest.fixture(scope="module")
def env():
    env = agentrl.make("textworld")
    yield env
    env.close()


def test_panels_are_fixed_ordered_and_disjoint(env):
    panels = {split: env.task_ids(split) for split in ("train", "valid", "test")}
    assert [len(panels[s]) for s in ("train", "valid", "test")] == [PANELS[s][1] for s in ("train", "valid", "test")]
    assert panels["valid"][:2] == ["easy/100000", "easy/100001"]
    assert not set(panels["train"]) & set(panels["valid"]) and not set(panels["valid"]) & set(panels["test"])
    assert env.task_ids("valid") == panels["valid"]
    assert agentrl.make("textworld", difficulty="medium").task_ids("test")[0] == "medium/200000"


def test_games_are_generated_deterministically_and_cached(env):
    path = game_path("easy/7")
    mtime = path.stat().st_mtime_ns
    assert game_path("easy/7") == path and path.stat().st_mtime_ns == mtime  # cached, not regenerated
    first = env.reset(options={"task": "easy/7"})[0]
    path.unlink()
    path.with_suffix(".json").unlink()
    assert env.reset(options={"task": "easy/7"})[0] == first  # regenerated from the seed: same game


def test_expert_trajectory_rewards_and_info(env):
    obs, info = env.reset(seed=0, options={"task": "easy/100000"})
    assert "-= " in obs and "$$$$" not in obs and not obs.rstrip().endswith(">")
    assert info["instruction"] and info["instruction"] in obs
    assert info["max_score"] == 1 and info["progress"] == 0.0
    assert env.expert_action() in info["admissible_actions"]
    total, steps = 0.0, 0
    while not env.episode_over:
        obs, reward, terminated, truncated, info = env.step(env.expert_action())
        total, steps = total + reward, steps + 1
        assert not info["invalid_action"]
    assert (info["won"], info["progress"], total, terminated, truncated) == (True, 1.0, 1.0, True, False)
    assert steps == 2  # easy quests are 2 steps long
    assert env.expert_action() is None


@pytest.mark.parametrize(
    ("action", "needle"),
    [
        ("", "empty action"),
        ("x" * 5000, "longer than"),
        ("prends la clé", "ASCII"),
        ("restart", "not available"),
        ("undo", "not available"),
    ],
)
def test_garbage_actions_are_invalid_and_do_not_touch_the_game(env, action, needle):
    env.reset(options={"task": "easy/100001"})
    obs, reward, terminated, truncated, info = env.step(action)
    assert needle in obs and info["invalid_action"] and reward == 0.0 and not terminated
    assert info["turn"] == 1


@pytest.mark.parametrize("action", ["\\q", "\\n", "\\help", "look \\n", "x\\y"])
def test_interpreter_escapes_never_reach_dumb_frotz(env, action, capfd):
    # A backslash commands the dumb-frotz interpreter inside jericho: "\q" and "\n" looped forever in
    # step (printing "unknown command" to the host's stdout), "\help" printed its help there.
    env.reset(options={"task": "easy/100001"})
    obs, reward, terminated, truncated, info = env.step(action)
    assert "'\\' is not understood" in obs and info["invalid_action"] and not terminated
    assert capfd.readouterr().out == ""
    assert "-= " in env.step("look")[0]


@pytest.mark.parametrize(
    "action",
    ["look. quit", "look.quit", "look then quit", "look, quit", "look,restart", "look. script", "take all. save",
     "inventory. transcript", "look. restore", "look. undo", "*quit", "x me! short"],
)  # fmt: skip
def test_meta_commands_are_refused_in_any_sentence(env, action, tmp_path, monkeypatch):
    # Inform runs every sentence of an input: "look. quit" left the game in its "Please answer yes or no."
    # prompt for good, and "look. script" / "save." wrote files into the host's working directory.
    monkeypatch.chdir(tmp_path)
    env.reset(options={"task": "easy/100001"})
    obs, _, terminated, _, info = env.step(action)
    assert "is not available in this game" in obs and info["invalid_action"] and not terminated
    obs, _, _, _, info = env.step("look")
    assert "-= " in obs and "yes or no" not in obs and info["invalid_action"] is False
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("action", ["look. then inventory", "go east. go west", "take all, drop all", "look then look"])
def test_one_command_per_turn(env, action):
    # Inform runs every sentence of an input: a chain would play several moves in one turn of max_turns.
    env.reset(options={"task": "easy/100001"})
    obs, _, terminated, _, info = env.step(action)
    assert "one command per turn" in obs and info["invalid_action"] and not terminated and info["turn"] == 1
    obs, _, _, _, info = env.step("look")
    assert obs.startswith("-= ") and info["invalid_action"] is False


def test_non_admissible_command_reaches_the_engine_and_is_flagged(env):
    env.reset(options={"task": "easy/100001"})
    obs, _, _, _, info = env.step("dance with the moon")
    assert info["invalid_action"] is True and obs  # the game's own answer
    obs, _, _, _, info = env.step("look")
    assert info["invalid_action"] is False and "-= " in obs


def test_unknown_task_is_a_clear_error(env):
    with pytest.raises(ValueError, match=r"task ids look like '<difficulty>/<seed>'"):
        env.reset(options={"task": "impossible/3"})
    assert parse_task_id("hard/12") == ("hard", 12)


def test_strip_banner_keeps_prose():
    text = "\n\n   ____ \n  |  $$ \\\n\nWelcome!\n\n\n\n-= Room =-\nA room.\n\n>  -= Room =-0/1\n"
    assert strip_banner(text) == "Welcome!\n\n-= Room =-\nA room."


def test_random_agent_is_seeded(env):
    a = evaluate(env, RandomAgent(), env_id="agentrl/TextWorld-v0", split="valid", episodes=2, seed=3)
    b = evaluate(env, RandomAgent(), env_id="agentrl/TextWorld-v0", split="valid", episodes=2, seed=3)
    assert [[s.action for s in ep.steps] for ep in a.episodes] == [[s.action for s in ep.steps] for ep in b.episodes]


@pytest.mark.slow
def test_expert_wins_every_task_of_the_valid_panel(env):
    generate_games(env.task_ids("valid"))  # in two processes: most of this test is making the 50 games
    report = evaluate(env, ExpertAgent(), env_id="agentrl/TextWorld-v0", split="valid")
    assert len(report.episodes) == PANELS["valid"][1]
    lost = [(ep.task_id, ep.error) for ep in report.episodes if not ep.won]
    assert lost == []
    assert report.summary()["success_rate"] == 1.0
