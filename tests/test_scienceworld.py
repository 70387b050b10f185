"""ScienceWorld on its real JVM engine: panels, outcomes, the gold-path expert, speed-free lifecycle checks.

One env (one JVM) serves most tests of this module; tests that kill or cap a JVM start their own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("scienceworld")

import agentrl  # noqa: E402
from agentrl.environments.scienceworld.env import (  # noqa: E402
    UNPARSED_REPLY,
    ScienceWorldEnv,
    canonical_listing,
)
from agentrl.environments.scienceworld.panels import build_panels, load_panels, task_names  # noqa: E402

#: Task types as listed in the ScienceWorld paper (Wang et al., 2022, Table 1): 10 topics, 30 tasks.
PAPER_TASK_COUNT = 30
#: boil/14 (the first dev variation of task 1-1): the gold path wins after this many actions.
BOIL_DEV = "boil/14"


def jvm_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (absent, or a zombie waiting for a reaper that is not us)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            state = next(line for line in f if line.startswith("State:"))
    except (FileNotFoundError, ProcessLookupError):
        return True
    return "Z" in state.split()[1]


def wait_gone(pid: int, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if jvm_gone(pid):
            return True
        time.sleep(0.1)
    return jvm_gone(pid)


def play_expert(env: ScienceWorldEnv, task_id: str) -> tuple[dict, float, float, int]:
    """Follow the gold path to the end; returns (last info, first progress, return, turns)."""
    _, info = env.reset(options={"task": task_id})
    first = info["progress"]
    total, turns = 0.0, 0
    while True:
        action = env.expert_action()
        assert action is not None, f"{task_id}: gold path ran out at turn {turns} before the episode ended"
        _, reward, terminated, truncated, info = env.step(action)
        total += reward
        turns += 1
        if terminated or truncated:
            return info, first, total, turns


@pytest.fixture(scope="module")
def env():
    environment = ScienceWorldEnv(split="dev", max_turns=250)
    yield environment
    pid = environment.jvm_pid
    environment.close()
    if pid is not None:
        assert wait_gone(pid), f"JVM {pid} outlived env.close()"


# -- panels and task ids ---------------------------------------------------------------------------


@pytest.mark.slow
def test_panels_match_the_engine(env):
    env.reset(options={"task": BOIL_DEV})  # starts the JVM
    live = build_panels(env.engine)
    assert live == load_panels()
    assert len(live) == PAPER_TASK_COUNT
    for name, panel in live.items():  # the three panels partition the task's variations
        every = sorted(panel["train"] + panel["dev"] + panel["test"])
        assert every == list(range(panel["max_variations"])), name


def test_task_ids_are_the_benchmark_panels_in_order(env):
    panels = load_panels()
    dev = env.task_ids("dev")
    assert dev[:7] == [f"boil/{v}" for v in range(14, 21)]  # task 1-1 first; boil has 30 variations
    assert len(dev) == sum(len(p["dev"]) for p in panels.values())
    assert [t.split("/")[0] for t in dev[::1]][-1] == "mendelian-genetics-unknown-plant"  # task 10-2 last
    assert env.task_ids("dev") == dev  # fixed
    assert ScienceWorldEnv(task="melt", split="test").task_ids() == [
        f"melt/{v}" for v in panels["melt"]["test"]
    ]
    assert task_names()[:4] == ["boil", "melt", "freeze", "change-the-state-of-matter-of"]


def test_unknown_task_variation_split_and_options_are_clear_errors(env):
    with pytest.raises(ValueError, match=r"unknown ScienceWorld task 'bake/1'.*boil, melt, freeze"):
        env.reset(options={"task": "bake/1"})
    with pytest.raises(ValueError, match=r"variations 0-29 \(train 0-13; dev 14-20; test 21-29\)"):
        env.reset(options={"task": "boil/30"})
    with pytest.raises(ValueError, match=r"'<task>/<variation>'"):
        env.reset(options={"task": "boil"})
    with pytest.raises(ValueError, match="choose one of train, dev, test"):
        env.task_ids("valid")
    with pytest.raises(ValueError, match="unknown ScienceWorld simplification 'hard'"):
        ScienceWorldEnv(simplification="hard")
    with pytest.raises(ValueError, match="unknown ScienceWorld task"):
        ScienceWorldEnv(task="bake")
    with pytest.raises(ValueError, match="jvm_heap must look like"):
        ScienceWorldEnv(jvm_heap="lots")
    no_wires = ScienceWorldEnv(simplification="noElectricalAction")
    with pytest.raises(ValueError, match="'power-component' needs electrical actions"):
        no_wires.reset(options={"task": "power-component/0"})
    assert no_wires.jvm_pid is None  # refused before any JVM started


def test_registered_and_made_by_alias_and_gymnasium():
    import gymnasium as gym

    entry = agentrl.registry.resolve("scienceworld")
    assert entry.id == "agentrl/ScienceWorld-v0" and entry.extra == "scienceworld"
    made = gym.make("agentrl/ScienceWorld-v0", task="boil").unwrapped
    try:
        assert isinstance(made, ScienceWorldEnv) and made.task_ids("dev")[0] == BOIL_DEV
        assert made.jvm_pid is None  # no JVM until the first reset
    finally:
        made.close()


# -- episodes, outcomes, expert ----------------------------------------------------------------------


def test_first_observation_is_deterministic_despite_engine_tie_order(env):
    # boil/1 starts in the art studio with three "wood cup"s, which the engine lists in an order
    # that changes from load to load; the env must show the same text every time.
    first = [env.reset(seed=3, options={"task": "boil/1"})[0] for _ in range(4)]
    assert len(set(first)) == 1
    cups = [line for line in first[0].split("\n") if line.startswith("\ta wood cup")]
    assert cups == sorted(cups) and len(cups) == 3


def test_canonical_listing_sorts_listed_objects_and_keeps_menus():
    text = "Here:\n\tthe agent\n\tan inclined plane H\n\tan inclined plane B\n\ta table. On it:\n\t\ta cup\n\ta bowl\n0:\tz\n1:\ta"
    assert canonical_listing(text) == (
        "Here:\n\ta bowl\n\ta table. On it:\n\t\ta cup\n\tan inclined plane B\n\tan inclined plane H\n\tthe agent\n0:\tz\n1:\ta"
    )
    assert canonical_listing(canonical_listing(text)) == canonical_listing(text)


def test_reset_info_and_expert_wins_boil_after_detour(env):
    obs, info = env.reset(options={"task": BOIL_DEV})
    assert info["instruction"].startswith("Your task is to boil ice cream.")
    assert obs.startswith(info["instruction"]) and "This room is called the art studio." in obs
    assert info["admissible_actions"] is None and info["won"] is False and info["progress"] == 0.0
    # two off-path turns before the expert is first asked: the gold path is generated and the
    # history replayed, and following it still wins
    for _ in range(2):
        _, reward, terminated, _, step_info = env.step("look around")
        assert (reward, terminated, step_info["invalid_action"]) == (0.0, False, False)
    total, turns = 0.0, 2
    while True:
        action = env.expert_action()
        _, reward, terminated, truncated, info = env.step(action)
        total += reward
        turns += 1
        if terminated or truncated:
            break
    assert info["won"] and terminated and not truncated
    assert info["progress"] == 1.0 and info["score"] == 100
    assert total == pytest.approx(1.0)  # rewards are progress increments: they sum to 1.0 - 0.0
    assert turns <= 2 + len(env.gold_path())
    assert env.expert_action() is None  # episode over


def test_negative_score_fails_the_episode_with_raw_score_kept(env):
    _, info = env.reset(options={"task": "find-animal/150"})
    assert info["score"] == 17 and info["progress"] == 0.17  # this variation starts with partial credit
    obs, reward, terminated, truncated, info = env.step("focus on agent")  # not an animal: task failed
    assert obs == "You focus on the agent."
    assert terminated and not truncated and not info["won"]
    assert info["score"] < 0 and info["progress"] == 0.0
    assert reward == pytest.approx(-0.17)  # progress fell from 0.17 to the clamped 0.0
    with pytest.raises(agentrl.EpisodeOver):
        env.step("look around")


def test_garbage_actions_are_invalid_actions_never_exceptions(env):
    env.reset(options={"task": BOIL_DEV})
    garbage = ["", "   ", "x" * 100_000, "\x00\x1b[31m\r\n", "ß→中文 🤖", "click[", "xyzzy plugh", "]]][[["]
    for turn, action in enumerate(garbage, start=1):
        obs, reward, terminated, truncated, info = env.step(action)
        assert info["invalid_action"], action[:20]
        assert UNPARSED_REPLY in obs and reward == 0.0 and not terminated and info["turn"] == turn
    obs, _, _, _, info = env.step("look around")
    assert not info["invalid_action"] and "This room is called the art studio." in obs


def test_admissible_actions_only_when_asked(env):
    env.reset(options={"task": BOIL_DEV})
    _, _, _, _, info = env.step("look around")
    assert info["admissible_actions"] is None
    valid = env.valid_actions()
    assert {"look around", "inventory", "go to hallway", "focus on jug"} <= set(valid) and valid == sorted(
        valid
    )
    assert "teleport to kitchen" in valid  # "easy" includes the teleportAction simplification
    assert "go to kitchen" not in valid  # the art studio has no door to the kitchen
    env.with_admissible = True
    try:
        _, info = env.reset(options={"task": BOIL_DEV})
        # the engine names look-alike objects (three paint cups) differently from call to call,
        # so two lists of the same state agree in size and in every unambiguous action
        again = env.valid_actions()
        assert len(info["admissible_actions"]) == len(again) == len(valid)
        assert {"look around", "go to hallway", "teleport to kitchen"} <= set(info["admissible_actions"])
        _, _, _, _, info = env.step("teleport to kitchen")
        assert (
            "go to kitchen" not in info["admissible_actions"]
            and "look at stove" in info["admissible_actions"]
        )
        _, _, _, _, info = env.step("xyzzy")  # invalid turns list the actions too
        assert info["invalid_action"] and "look at stove" in info["admissible_actions"]
    finally:
        env.with_admissible = False


@pytest.mark.slow
def test_expert_wins_every_task_type_on_dev_in_two_threads():
    """The gold path of the first dev variation of each of the 30 tasks wins (score 100).

    Two envs (two JVMs) share the tasks from two threads, which also shows envs running in parallel.
    """
    names = task_names()
    outcomes: dict[str, tuple] = {}
    pids: set[int] = set()

    def worker(share: list[str]) -> None:
        own = ScienceWorldEnv(split="dev", max_turns=300)  # gold paths are up to ~180 actions
        try:
            for name in share:
                task_id = f"{name}/{load_panels()[name]['dev'][0]}"
                try:
                    outcomes[task_id] = play_expert(own, task_id)
                except Exception as exc:  # recorded, asserted below
                    outcomes[task_id] = (exc,)
                pids.add(own.jvm_pid)
        finally:
            own.close()

    # interleave long and short tasks between the two workers
    threads = [threading.Thread(target=worker, args=(names[i::2],)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=1200)
    assert len(outcomes) == PAPER_TASK_COUNT and len(pids) == 2
    failures = []
    for task_id, outcome in outcomes.items():
        if len(outcome) == 1:
            failures.append(f"{task_id}: {outcome[0]!r}")
            continue
        info, first, total, turns = outcome
        if not (info["won"] and info["progress"] == 1.0 and info["score"] == 100):
            failures.append(f"{task_id}: score {info['score']} after {turns} turns")
        elif total != pytest.approx(1.0 - first):  # rewards telescope to the progress gained
            failures.append(f"{task_id}: rewards sum to {total}, expected {1.0 - first}")
    assert not failures, failures


# -- JVM lifecycle -------------------------------------------------------------------------------


def test_heap_cap_close_and_no_leftover_jvm():
    small = ScienceWorldEnv(jvm_heap="384m")
    small.reset(options={"task": "find-animal/150"})
    pid = small.jvm_pid
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        args = f.read().split(b"\0")
    assert b"-Xmx384m" in args
    small.reset(options={"task": "melt/14"})
    assert small.jvm_pid == pid  # reused across resets
    small.close()
    small.close()
    assert small.jvm_pid is None and jvm_gone(pid)


def test_default_heap_is_one_gigabyte(env):
    env.reset(options={"task": BOIL_DEV})
    with open(f"/proc/{env.jvm_pid}/cmdline", "rb") as f:
        assert b"-Xmx1g" in f.read().split(b"\0")


def test_killed_jvm_fails_the_episode_and_reset_starts_a_fresh_one(env):
    env.reset(options={"task": BOIL_DEV})
    env.step("open door to hallway")
    old = env.jvm_pid
    os.kill(old, signal.SIGKILL)
    assert wait_gone(old)
    obs, reward, terminated, truncated, info = env.step("go to hallway")
    assert terminated and not truncated and not info["won"] and reward == 0.0
    assert f"pid {old}" in info["engine_error"] and "exited with code -9" in info["engine_error"]
    assert "simulator failed" in obs
    assert env.expert_action() is None
    obs, info = env.reset(options={"task": BOIL_DEV})
    assert env.jvm_pid not in (None, old)
    assert info["instruction"].startswith("Your task is to boil ice cream.")
    _, _, _, _, info = env.step("open door to hallway")
    assert "engine_error" not in info and not info["invalid_action"]


def test_jvm_dies_with_its_owner_process():
    code = (
        "import os, signal\n"
        "from agentrl.environments.scienceworld.env import ScienceWorldEnv\n"
        "env = ScienceWorldEnv()\n"
        "env.reset(options={'task': 'find-animal/150'})\n"
        "print(env.jvm_pid, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    pid = int(proc.stdout.split()[0])
    assert wait_gone(pid, 20.0), f"JVM {pid} outlived its SIGKILLed owner"


def test_envs_in_parallel_processes():
    import gymnasium as gym

    vector = gym.vector.AsyncVectorEnv(
        [lambda: agentrl.make("scienceworld", split="dev", task="find-animal", jvm_heap="512m")] * 2,
        shared_memory=False,
    )
    try:
        obs, _ = vector.reset(seed=[0, 1])
        assert all(o.startswith("Your task is to find a(n) animal.") for o in obs)
        obs, _, terminated, truncated, infos = vector.step(["look around", "xyzzy"])
        assert "This " in obs[0] and UNPARSED_REPLY in obs[1]
        assert list(infos["invalid_action"]) == [False, True]
        pids = list(vector.get_attr("jvm_pid"))
        assert len(set(pids)) == 2 and None not in pids
    finally:
        vector.close()
    assert all(wait_gone(pid) for pid in pids)
