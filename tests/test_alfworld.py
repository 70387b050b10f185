"""ALFWorld on its real engine and the real game files of ../shared/data/alfworld (json_2.1.1).

References used: ALFWorld's own loader (``AlfredTWEnv.collect_game_files``) for the panels, its
``AlfredExpert`` wrapper for the hand-coded expert's actions, TextWorld's engine driven directly for
observations and admissible commands, and the counts in the data's PROVENANCE.md.
"""

from __future__ import annotations

import functools
import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("alfworld")
pytest.importorskip("textworld")

from agentrl.agents import make_scripted_agent  # noqa: E402
from agentrl.environments.alfworld import data as alf_data  # noqa: E402
from agentrl.environments.alfworld.env import ALFWorldEnv, normalise_action, patch_game_data  # noqa: E402
from agentrl.evaluation import evaluate, run_episode  # noqa: E402

try:
    ROOT = alf_data.resolve_root()
except alf_data.DataRootError as exc:  # pragma: no cover - CI always has the data
    pytest.skip(f"no ALFWorld data: {exc}", allow_module_level=True)

UNSEEN = "json_2.1.1/valid_unseen"
#: One valid_unseen game per task type whose plan is found in well under a second.
SAMPLE = {
    "look_at_obj_in_light": f"{UNSEEN}/look_at_obj_in_light-AlarmClock-None-DeskLamp-308/trial_T20190908_222917_366542/game.tw-pddl",
    "pick_and_place_simple": f"{UNSEEN}/pick_and_place_simple-Mug-None-Desk-308/trial_T20190909_203041_433487/game.tw-pddl",
    "pick_clean_then_place_in_recep": f"{UNSEEN}/pick_clean_then_place_in_recep-Bowl-None-Cabinet-10/trial_T20190909_061130_844814/game.tw-pddl",
    "pick_heat_then_place_in_recep": f"{UNSEEN}/pick_heat_then_place_in_recep-Apple-None-Fridge-10/trial_T20190906_182259_116320/game.tw-pddl",
    "pick_cool_then_place_in_recep": f"{UNSEEN}/pick_cool_then_place_in_recep-Bread-None-CounterTop-10/trial_T20190908_091747_866951/game.tw-pddl",
    "pick_two_obj_and_place": f"{UNSEEN}/pick_two_obj_and_place-SoapBar-None-GarbageCan-424/trial_T20190909_064053_839817/game.tw-pddl",
}


@pytest.fixture(scope="module")
def env():
    env = ALFWorldEnv(split="valid_unseen")
    yield env
    env.close()


def _raw_engine(game_file: Path, *, expert: bool = False):
    """TextWorld's engine on a game file, wrapped as ALFWorld's AlfredTWEnv wraps it."""
    import textworld
    from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredExpert, AlfredExpertType

    infos = textworld.EnvInfos(won=True, admissible_commands=True, extras=["expert_plan"] if expert else [])
    wrappers = [AlfredDemangler(shuffle=False)]
    if expert:
        wrappers.append(AlfredExpert(AlfredExpertType.HANDCODED))
    return textworld.start(str(game_file), request_infos=infos, wrappers=wrappers)


# -- panels and data root ---------------------------------------------------------------------


def test_panels_match_alfworlds_own_loader_and_provenance_counts(env):
    from alfworld.agents.environment.alfred_tw_env import AlfredTWEnv

    sizes = {split: len(env.task_ids(split)) for split in ("valid_seen", "valid_unseen", "valid_train")}
    assert sizes == {"valid_seen": 140, "valid_unseen": 134, "valid_train": 165}  # PROVENANCE.md
    config = {
        "env": {"goal_desc_human_anns_prob": 0, "task_types": [1, 2, 3, 4, 5, 6]},
        "dataset": {
            "data_path": str(ROOT / "json_2.1.1/valid_train"),
            "eval_id_data_path": str(ROOT / "json_2.1.1/valid_seen"),
            "eval_ood_data_path": str(ROOT / UNSEEN),
            "num_train_games": -1,
            "num_eval_games": -1,
        },
    }
    for split, mode in [("valid_seen", "eval_in_distribution"), ("valid_unseen", "eval_out_of_distribution")]:
        theirs = AlfredTWEnv(config, train_eval=mode).game_files
        panel = env.task_ids(split)
        assert panel == sorted(panel)
        assert set(panel) == {Path(p).relative_to(ROOT).as_posix() for p in theirs}
    assert all((ROOT / t).is_file() for t in env.task_ids("valid_unseen"))
    with pytest.warns(UserWarning, match="valid_train"):  # no full train folder in the CI data
        assert env.task_ids("train") == env.task_ids("valid_train")
    with pytest.raises(ValueError, match="valid_unseen"):
        env.task_ids("test")


def test_missing_or_empty_data_root_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(alf_data.DataRootError, match=f"{tmp_path / 'nope'}.*agentrl data fetch alfworld"):
        ALFWorldEnv(data_root=tmp_path / "nope")
    with pytest.raises(alf_data.DataRootError, match=f"{tmp_path}.*holds no games.*agentrl data fetch alfworld"):
        ALFWorldEnv(data_root=tmp_path)
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path))  # a user's choice never falls through to another root
    with pytest.raises(alf_data.DataRootError, match=r"\$ALFWORLD_DATA"):
        ALFWorldEnv()
    monkeypatch.setenv("ALFWORLD_DATA", str(ROOT))
    assert ALFWorldEnv().data_root.resolve() == ROOT.resolve()  # the root may be reached through a link


def test_unknown_task_ids_are_refused_with_the_id_format(env):
    for bad in ("nope", "/etc/passwd", f"{UNSEEN}/../../../x/game.tw-pddl", f"{UNSEEN}/missing/game.tw-pddl"):
        with pytest.raises(ValueError, match="task"):
            env.reset(options={"task": bad})


# -- actions, observations, info ---------------------------------------------------------------


def test_observations_and_admissible_actions_match_the_raw_engine(env):
    """Same game, same actions: our text equals TextWorld's on the json_2.1.1 file, up to the 2.1.2 wording."""
    task = SAMPLE["pick_and_place_simple"]
    raw = _raw_engine(ROOT / task)
    state = raw.reset()
    obs, info = env.reset(seed=0, options={"task": task})
    assert state.feedback.startswith("-= Welcome to TextWorld, ALFRED! =-") and state.feedback.endswith(obs)
    plan = [env.oracle_action()]
    while not env.episode_over:
        action = env.oracle_action()
        old_wording = action.replace(" to ", " in/on ").replace("move ", "put ") if action.startswith("move ") else action
        expected_admissible = sorted(
            ["help"] + [a.replace("put ", "move ", 1).replace(" in/on ", " to ") for a in state.admissible_commands]
        )
        assert info["admissible_actions"] == expected_admissible
        state, _, _ = raw.step(old_wording)
        obs, reward, terminated, truncated, info = env.step(action)
        plan.append(action)
        if action.startswith("go to "):  # 2.1.1 says "You arrive at loc 14.", 2.1.2 names the receptacle
            assert obs.startswith(f"You arrive at {action[6:]}.") and "arrive at loc" in state.feedback
            assert obs.split(". ", 1)[1] == state.feedback.split(". ", 1)[1]
        elif action.startswith("move "):
            assert obs == state.feedback.replace("You put the ", "You move the ").replace(" in/on the ", " to the ")
        else:
            assert obs == state.feedback
    assert (info["won"], terminated, reward, info["progress"]) == (True, True, 1.0, 1.0) and state.won


def test_both_action_wordings_and_help(env):
    task = SAMPLE["pick_and_place_simple"]
    env.reset(seed=0, options={"task": task})
    plan = []
    while not env.episode_over:
        plan.append(env.oracle_action())
        env.step(plan[-1])
    move = next(a for a in plan if a.startswith("move "))
    obj, recep = move[5:].split(" to ")
    for wording in (f"put {obj} in/on {recep}", f"Put {obj} in {recep}.", f"put {obj} on {recep}"):
        env.reset(seed=0, options={"task": task})
        for action in plan:
            obs, reward, terminated, _, info = env.step(wording if action == move else action)
            assert not info["invalid_action"]
        assert terminated and info["won"] and reward == 1.0
    assert normalise_action(f"put {obj} into the {recep}") == move
    env.reset(seed=0, options={"task": task})
    obs, _, _, _, info = env.step("help")
    assert obs.startswith("Available commands:") and "move (object) to (receptacle)" in obs
    assert not info["invalid_action"] and "help" in info["admissible_actions"]


def test_patched_2_1_2_file_plays_exactly_like_the_in_memory_patch(env, tmp_path):
    task = SAMPLE["look_at_obj_in_light"]
    trial = tmp_path / Path(task).parent
    shutil.copytree(ROOT / Path(task).parent, trial)
    original = json.loads((trial / "game.tw-pddl").read_text())
    patched = patch_game_data(original)
    assert alf_data.data_version(original) == "2.1.1" and alf_data.data_version(patched) == "2.1.2"
    assert patch_game_data(patched) is patched  # 2.1.2 files are not patched twice
    (trial / "game.tw-pddl").write_text(json.dumps(patched))
    other = ALFWorldEnv(data_root=tmp_path, split="valid_unseen")
    try:
        assert other.task_ids() == [task]
        theirs_obs, theirs_info = other.reset(seed=3, options={"task": task})
        ours_obs, ours_info = env.reset(seed=3, options={"task": task})
        assert (theirs_info.pop("data_version"), ours_info.pop("data_version")) == ("2.1.2", "2.1.1")
        assert (theirs_obs, theirs_info) == (ours_obs, ours_info)
        for action in ("go to desk 1", "help", "look", "take mug 1 from desk 1"):
            assert other.step(action)[0] == env.step(action)[0]
    finally:
        other.close()


def test_info_instruction_task_type_and_invalid_actions(env):
    for task_type, task in SAMPLE.items():
        obs, info = env.reset(seed=0, options={"task": task})
        traj = json.loads((ROOT / task).with_name("traj_data.json").read_text())
        assert info["task_type"] == task_type == traj["task_type"]
        grammar = json.loads((ROOT / task).read_text())["grammar"]
        assert info["instruction"] and f"Your task is to: {info['instruction']}" in obs
        assert info["instruction"] in grammar
        assert (info["won"], info["progress"], info["invalid_action"]) == (False, 0.0, False)
    admissible = info["admissible_actions"]
    for garbage in ("", "xyzzy", "go to the moon", "\x00\x1b[31m", "ß→中文", "x" * 5000, "take everything"):
        obs, reward, terminated, truncated, info = env.step(garbage)
        assert (obs, reward, terminated, info["invalid_action"]) == ("Nothing happens.", 0.0, False, True)
        assert info["admissible_actions"] == admissible  # the state did not change


# -- experts -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_oracle_wins_every_task_type_and_caches_its_plan(env, tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTRL_CACHE", str(tmp_path))
    agent = make_scripted_agent("oracle")
    lengths = {}
    for task_type, task in SAMPLE.items():
        episode = run_episode(env, agent, env_id="agentrl/ALFWorld-v0", task_id=task, seed=0)
        assert episode.error is None and episode.won, (task_type, episode.error)
        assert all(not s.info["invalid_action"] for s in episode.steps)
        lengths[task_type] = episode.turns
    assert all(3 <= n <= 20 for n in lengths.values()), lengths
    assert len(list((tmp_path / "alfworld" / "plans").glob("*.json"))) == len(SAMPLE)


def test_oracle_replans_when_the_agent_leaves_the_plan(env):
    task = SAMPLE["pick_and_place_simple"]
    env.reset(seed=0, options={"task": task})
    first = env.oracle_action()
    detour = next(a for a in env.step("look")[4]["admissible_actions"] if a.startswith("go to ") and a != first)
    env.step(detour)
    assert env.oracle_action() is not None
    while not env.episode_over:
        obs, reward, terminated, truncated, info = env.step(env.oracle_action())
    assert info["won"] and env.oracle_action() is None


def _reference_expert_actions(game_file: Path, seed: int, turns: int, workdir: Path) -> tuple[list[str], bool]:
    """ALFWorld's AlfredExpert on the 2.1.2 version of a game, its RNG seeded like ours."""
    trial = workdir / game_file.parent.name
    shutil.copytree(game_file.parent, trial, dirs_exist_ok=True)
    (trial / "game.tw-pddl").write_text(json.dumps(patch_game_data(json.loads(game_file.read_text()))))
    raw = _raw_engine(trial / "game.tw-pddl", expert=True)
    state = raw.reset()
    actions: list[str] = []
    saved = random.getstate()
    random.seed(seed)
    try:
        while len(actions) < turns and not state["won"]:
            actions.append(state["extra.expert_plan"][0])
            state, _, _ = raw.step(actions[-1])
    finally:
        random.setstate(saved)
    return actions, bool(state["won"])


@pytest.mark.slow
def test_hand_coded_expert_acts_exactly_as_alfworlds_alfred_expert(env, tmp_path):
    results = {}
    for task_type, task in SAMPLE.items():
        obs, info = env.reset(seed=11, options={"task": task})
        seed = env._expert_seed  # the RNG seed our expert got from the env's np_random
        ours = []
        while not env.episode_over and len(ours) < 20:
            ours.append(env.expert_action())
            obs, reward, terminated, truncated, info = env.step(ours[-1])
        theirs, won = _reference_expert_actions(ROOT / task, seed, len(ours), tmp_path)
        assert ours == theirs, task_type
        assert info["won"] == won
        results[task_type] = won
    assert sum(results.values()) >= 4, results


def test_expert_is_deterministic_per_seed(env):
    task = SAMPLE["pick_two_obj_and_place"]

    def run(seed: int) -> list[str]:
        env.reset(seed=seed, options={"task": task})
        actions = []
        for _ in range(12):
            actions.append(env.expert_action())
            if env.step(actions[-1])[2]:
                break
        return actions

    assert run(5) == run(5)


# -- bad files, parallel envs, command line ----------------------------------------------------


def test_malformed_game_fails_its_task_not_the_panel(env, tmp_path):
    good = SAMPLE["look_at_obj_in_light"]
    shutil.copytree(ROOT / Path(good).parent, tmp_path / Path(good).parent)
    bad_trial = tmp_path / UNSEEN / "pick_and_place_simple-Mug-None-Desk-999" / "trial_broken"
    bad_trial.mkdir(parents=True)
    (bad_trial / "traj_data.json").write_text('{"task_type": "pick_and_place_simple"}')
    (bad_trial / "game.tw-pddl").write_text('{"pddl_domain": "(define', encoding="utf-8")
    unparsable = tmp_path / UNSEEN / "pick_and_place_simple-Mug-None-Desk-998" / "trial_unparsable"
    unparsable.mkdir(parents=True)
    (unparsable / "traj_data.json").write_text('{"task_type": "pick_and_place_simple"}')
    game = {"pddl_domain": "(define (domain d))", "grammar": "y", "pddl_problem": "(define (problem", "solvable": True}
    (unparsable / "game.tw-pddl").write_text(json.dumps(game))
    broken = ALFWorldEnv(data_root=tmp_path, split="valid_unseen")
    try:
        panel = broken.task_ids()
        bad = (bad_trial / "game.tw-pddl").relative_to(tmp_path).as_posix()
        assert panel == sorted([good, bad, (unparsable / "game.tw-pddl").relative_to(tmp_path).as_posix()])
        with pytest.raises(ValueError, match=f"{unparsable / 'game.tw-pddl'} failed to load: [^\n]*$"):
            broken.reset(options={"task": panel[1]})
        with pytest.raises(ValueError, match=f"{bad_trial / 'game.tw-pddl'}.*unreadable"):
            broken.reset(options={"task": bad})
        report = evaluate(broken, make_scripted_agent("oracle"), env_id="alfworld", split="valid_unseen")
        outcome = {ep.task_id: (ep.won, ep.error is None) for ep in report.episodes}
        assert outcome == {good: (True, True), bad: (False, False), panel[1]: (False, False)}
        assert "unreadable" in next(ep.error for ep in report.episodes if ep.task_id == bad)
    finally:
        broken.close()


_make_env = functools.partial(ALFWorldEnv, split="valid_unseen", max_turns=5)


@pytest.mark.slow
def test_parallel_envs_in_processes_each_with_its_own_game(env):
    import gymnasium as gym

    expected = []
    for seed in (0, 1):  # sequential reference: AsyncVectorEnv seeds env i with seed + i
        obs, info = env.reset(seed=seed)
        expected.append((info["task_id"], obs, env.step("look")[0], env.step("inventory")[0]))
    assert expected[0][0] != expected[1][0]
    vec = gym.vector.AsyncVectorEnv([_make_env] * 2, shared_memory=False)
    try:
        processes = list(vec.processes)
        obs, infos = vec.reset(seed=0)
        looks = vec.step(["look", "look"])[0]
        inventories = vec.step(["inventory", "inventory"])[0]
        got = list(zip(infos["task_id"], obs, looks, inventories, strict=True))
        assert [tuple(map(str, row)) for row in got] == expected
        assert len({p.pid for p in processes}) == 2
    finally:
        vec.close()
    assert all(not p.is_alive() for p in processes)


def test_two_envs_in_one_process_do_not_share_engine_state(env):
    tasks = [SAMPLE["pick_and_place_simple"], SAMPLE["pick_heat_then_place_in_recep"]]
    actions = ("look", "go to countertop 1", "inventory")
    other = ALFWorldEnv(split="valid_unseen")
    try:
        alone = []
        for instance, task in zip((env, other), tasks, strict=True):  # one after the other
            instance.reset(seed=0, options={"task": task})
            alone.append([instance.step(a)[0] for a in actions])
        env.reset(seed=0, options={"task": tasks[0]})
        other.reset(seed=0, options={"task": tasks[1]})
        interleaved: list[list[str]] = [[], []]
        for action in actions:
            interleaved[0].append(env.step(action)[0])
            interleaved[1].append(other.step(action)[0])
        assert interleaved == alone and alone[0] != alone[1]
    finally:
        other.close()
        other.close()


def test_cli_data_check_and_offline_fetch(tmp_path):
    out = subprocess.run(
        ["agentrl", "data", "check", "alfworld", "--root", str(ROOT)], capture_output=True, text=True, check=True
    ).stdout
    assert "valid_unseen: 134 games in the panel (134 game files on disk)" in out
    assert "valid_seen: 140 games" in out and "json_2.1.1 (`put X in/on Y`" in out
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare to make an offline network namespace")
    dest = tmp_path / "fetched"
    proc = subprocess.run(
        ["unshare", "--net", shutil.which("agentrl"), "data", "fetch", "alfworld", "--dest", str(dest)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr
    assert "no network here" in proc.stderr and "ALFWORLD_DATA" in proc.stderr
    assert "Traceback" not in proc.stderr and not dest.exists()
