"""``agentrl/ALFWorld-v0``: ALFWorld's text games on its own TextWorld/PDDL engine.

Each env owns one engine (TextWorld's ``PddlEnv`` with its private copy of fast-downward's library,
wrapped by ALFWorld's ``AlfredDemangler`` exactly as ``AlfredTWEnv`` does) and plays one game at a
time; resetting on the game already loaded skips reloading it. Many envs run in parallel as
processes (e.g. ``gymnasium.vector.AsyncVectorEnv(..., shared_memory=False)``); ``close`` frees
the engine and the planner's memory (the library copy stays mapped until its process exits).

One action language whatever the data version: games of the original json_2.1.1 data (``put X in/on
Y``, no ``help``, "You arrive at loc 14.") are patched in memory the way upstream's
``scripts/patch_tw-pddl.py`` patches the files (``move X to Y``, ``help``, "You arrive at desk 1."),
so observations, admissible actions and experts read the same on both versions. Input in the old
wording (``put X in Y``, ``put X on Y``, ``put X in/on Y``) is accepted and rewritten.

Two experts:

* ``expert_action()``: ALFWorld's hand-coded expert (``HandCodedTWAgent``, as ``AlfredExpert``
  drives it for DAgger), the one behind the papers' SFT/DAgger data. It explores and can fail.
  Its random tie-breaks draw from a per-episode RNG seeded from the env's ``np_random``.
* ``oracle_action()``: TextWorld's own plan on the full game state (what ``policy_commands``
  returns), computed once per reset (and cached on disk per game), followed while the agent
  follows it, recomputed from the current state if the agent leaves it.

Reward is 1.0 on the winning step; ``progress`` is 0/1 because the engine exposes only whether the
goal holds, not which of its conditions do.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from pathlib import Path
from typing import Any, ClassVar

from agentrl.core import PromptSpec, TextEnv, clean_action
from agentrl.environments.alfworld.data import (
    data_version,
    panel,
    resolve_root,
    split_dir,
    task_type_of,
)

INVALID_FEEDBACK = "Nothing happens."

# Upstream's scripts/patch_tw-pddl.py (json_2.1.1 -> 2.1.2), applied in memory.
HELP_ACTION_PDDL = """\
(:action help
    :parameters (?a - agent)
    :precondition
        ()
    :effect
        (and
            (checked ?a)
        )
)
"""
HELP_GRAMMAR = (
    "\n\naction help {\n    template :: \"help\";\n    feedback :: \"\nAvailable commands:\n"
    "  look:                             look around your current location\n"
    "  inventory:                        check your current inventory\n"
    "  go to (receptacle):               move to a receptacle\n"
    "  open (receptacle):                open a receptacle\n"
    "  close (receptacle):               close a receptacle\n"
    "  take (object) from (receptacle):  take an object from a receptacle\n"
    "  move (object) to (receptacle):  place an object in or on a receptacle\n"
    "  examine (something):              examine a receptacle or an object\n"
    "  use (object):                     use an object\n"
    "  heat (object) with (receptacle):  heat an object using a receptacle\n"
    "  clean (object) with (receptacle): clean an object using a receptacle\n"
    "  cool (object) with (receptacle):  cool an object using a receptacle\n"
    "  slice (object) with (object):     slice an object using a sharp object\n\";\n}\n"
)

_PUT = re.compile(r"^put (?P<obj>.+?) (?:in/on|in|on|into|onto|inside|to) (?:the )?(?P<recep>\S+ \d+)$")
_TASK_LINE = re.compile(r"Your task is to: *(?P<goal>[^\n]*)")
_WELCOME = re.compile(r"^-= Welcome to TextWorld, ALFRED! =-\s*")

# The hand-coded expert breaks ties with the `random` module; we lend it the episode's RNG instead.
_EXPERT_RNG_LOCK = threading.Lock()


def patch_game_data(data: dict[str, Any]) -> dict[str, Any]:
    """Bring a json_2.1.1 game to the 2.1.2 wording (upstream's patch); a 2.1.2 game is returned as is."""
    if data_version(data) == "2.1.2":
        return data
    before, after = data["pddl_domain"].rsplit(")", 1)
    grammar = data["grammar"]
    grammar = grammar.replace("You arrive at {lend.name}.", "You arrive at {r.name}.")
    grammar = grammar.replace("put {o} in/on {r}", "move {o} to {r}")
    grammar = grammar.replace("You put the {o.name} in/on the {r.name}.", "You move the {o.name} to the {r.name}.")
    return {**data, "pddl_domain": f"{before}{HELP_ACTION_PDDL}){after}", "grammar": grammar + HELP_GRAMMAR}


def normalise_action(text: str) -> str:
    """Lower-case, drop a final period, and rewrite ``put X in/on Y`` (json_2.1.1) as ``move X to Y``."""
    text = text.strip().lower().rstrip(".").strip()
    match = _PUT.match(text)
    if match:
        return f"move {match['obj']} to {match['recep']}"
    return text


def plan_cache_dir() -> Path:
    root = Path(os.environ.get("AGENTRL_CACHE", Path.home() / ".cache" / "agentrl"))
    return root / "alfworld" / "plans"


class _HandCodedExpert:
    """ALFWorld's ``HandCodedTWAgent`` driven as ``AlfredExpert`` drives it, fed lazily.

    The expert tracks every state of the episode; the env records them and the expert catches up
    only when asked, so episodes that never ask for it pay nothing.
    """

    def __init__(self, game_file: Path, seed: int):
        import random

        from alfworld.agents.expert import HandCodedTWAgent

        self.agent = HandCodedTWAgent(max_steps=200)  # AlfredExpert's setting
        self.agent.reset(str(game_file))  # reads traj_data.json next to the game
        self.rng = random.Random(seed)
        self.seen = 0
        self.next_action = "look"
        self.gave_up = False

    def catch_up(self, history: list[tuple[Any, str]]) -> str:
        from alfworld.agents.expert import HandCodedAgentFailed, HandCodedAgentTimeout
        from alfworld.agents.expert import handcoded_expert as module

        with _EXPERT_RNG_LOCK:
            saved = module.random
            module.random = self.rng
            try:
                while self.seen < len(history):
                    state, last_command = history[self.seen]
                    self.seen += 1
                    if self.gave_up:
                        continue
                    self.next_action = "look"
                    if self.seen == 1:
                        self.agent.observe(state["feedback"])
                        continue
                    try:
                        action = self.agent.act(state, 0, state["won"], last_command)
                    except (HandCodedAgentTimeout, HandCodedAgentFailed):
                        self.gave_up = True  # it idles ("look") until the episode ends
                        continue
                    if action in state["admissible_commands"]:
                        self.next_action = action
            finally:
                module.random = saved
        return self.next_action


class ALFWorldEnv(TextEnv):
    """An ALFWorld household task: reach the goal stated in the instruction. Reward 1.0 when won."""

    splits: ClassVar[tuple[str, ...]] = ("train", "valid_seen", "valid_unseen", "valid_train")
    prompt: ClassVar[PromptSpec] = PromptSpec(
        "You are a household robot in a simulated home. Complete the task by interacting with objects and "
        "receptacles."
    )

    def __init__(
        self,
        *,
        split: str | None = None,
        data_root: str | os.PathLike[str] | None = None,
        max_turns: int = 50,
        admissible_actions: bool = True,
        render_mode: str | None = None,
    ):
        super().__init__(split=split, max_turns=max_turns, render_mode=render_mode)
        self.data_root = resolve_root(data_root)
        self.with_admissible = admissible_actions
        self._engine = None  # AlfredDemangler(PddlEnv) of the loaded game
        self._pddl = None  # the PddlEnv inside it
        self._loaded: str | None = None
        self._game_data: dict[str, Any] | None = None
        self._file_version = ""
        self._state = None
        self._history: list[tuple[Any, str]] = []
        self._expert: _HandCodedExpert | None = None
        self._expert_seed = 0
        self._plan: list[str] | None = None

    # -- panels ------------------------------------------------------------------------------

    def task_ids(self, split: str | None = None) -> list[str]:
        """ALFWorld's games of ``split`` (its own loading filter), sorted; ids are paths under the data root."""
        split = split or self.split
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; choose one of {', '.join(self.splits)}")
        return panel(self.data_root, split)

    def task_type(self, task_id: str) -> str | None:
        """The task type in the id's task folder (pick_and_place_simple, ..., pick_two_obj_and_place)."""
        return task_type_of(task_id)

    def _game_file(self, task_id: str) -> Path:
        rel = Path(task_id)
        if rel.is_absolute() or ".." in rel.parts or rel.name != "game.tw-pddl":
            raise ValueError(
                f"unknown ALFWorld task {task_id!r}: task ids are game paths relative to the data root, "
                f"e.g. {split_dir(self.data_root, 'valid_unseen')}/<task>/<trial>/game.tw-pddl "
                "(see env.task_ids(split))"
            )
        path = self.data_root / rel
        if not path.is_file():
            raise ValueError(f"unknown ALFWorld task {task_id!r}: no game file {path} (see env.task_ids(split))")
        return path

    # -- engine ------------------------------------------------------------------------------

    def _load(self, task_id: str) -> None:
        path = self._game_file(task_id)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"ALFWorld game {path} is unreadable: {exc}") from None
        keys = ("pddl_domain", "grammar", "pddl_problem")
        missing = [k for k in keys if not isinstance(data, dict) or not isinstance(data.get(k), str)]
        if missing:
            raise ValueError(f"ALFWorld game {path} is malformed: it lacks the text of {', '.join(missing)}")
        self._file_version = data_version(data)
        data = patch_game_data(data)
        if self._engine is None:
            import textworld
            from alfworld.agents.environment.alfred_tw_env import AlfredDemangler
            from textworld.envs.pddl import PddlEnv

            infos = textworld.EnvInfos(won=True, admissible_commands=True, facts=True)
            self._pddl = PddlEnv(infos)
            self._engine = AlfredDemangler(shuffle=False)(self._pddl)
        self._loaded = None
        try:
            self._engine.load(data)
        except (Exception, SystemExit) as exc:  # the PDDL parser/translator's errors are many (it may sys.exit)
            first_line = (str(exc).strip().splitlines() or [""])[0]
            raise ValueError(f"ALFWorld game {path} failed to load: {type(exc).__name__}: {first_line}") from None
        self._loaded = task_id
        self._game_data = data

    def _reset_task(self, task_id: str) -> tuple[str, dict[str, Any]]:
        if task_id != self._loaded:
            self._load(task_id)
        self._state = self._engine.reset()
        self._history = [(self._state, "")]
        self._expert = None
        self._expert_seed = int(self.np_random.integers(2**31))
        self._plan = None
        feedback = self._state["feedback"]
        goal = _TASK_LINE.search(feedback)
        info = self._info()
        info["instruction"] = goal["goal"].strip() if goal else ""
        info["task_type"] = task_type_of(task_id)
        info["data_version"] = self._file_version  # of the file; the agent always sees the 2.1.2 wording
        return _WELCOME.sub("", feedback).strip(), info

    def _step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        text, problem = clean_action(action)
        command = normalise_action(text) if problem is None else ""
        admissible = self._state["admissible_commands"]
        if command in admissible:
            self._state, _, _ = self._engine.step(command)
            invalid = False
        else:
            # What the engine does for a command it does not know, without recomputing the state.
            state = type(self._state)(self._state)
            state["feedback"] = state["raw"] = INVALID_FEEDBACK
            state["last_command"] = command
            self._state = state
            invalid = True
        self._history.append((self._state, command))
        if self._plan is not None and not invalid:
            if self._plan and command == self._plan[0]:
                self._plan.pop(0)
            else:
                self._plan = None  # the agent left the plan: replan from here when asked
        won = bool(self._state["won"])
        info = self._info()
        info["invalid_action"] = invalid
        return self._state["feedback"].strip(), 1.0 if won else 0.0, won, info

    def _info(self) -> dict[str, Any]:
        won = bool(self._state["won"])
        return {
            "won": won,
            "progress": 1.0 if won else 0.0,
            "admissible_actions": list(self._state["admissible_commands"]) if self.with_admissible else None,
            "task_type": task_type_of(self._loaded or ""),
        }

    # -- experts -----------------------------------------------------------------------------

    def expert_action(self) -> str | None:
        """ALFWorld's hand-coded expert's next action ("look" once it has given up)."""
        if self._state is None or self.episode_over:
            return None
        if self._expert is None:
            self._expert = _HandCodedExpert(self.data_root / self._loaded, self._expert_seed)
        return self._expert.catch_up(self._history)

    def oracle_action(self) -> str | None:
        """The next command of TextWorld's plan on the full state (``None`` if no plan reaches the goal)."""
        if self._state is None or self.episode_over:
            return None
        if self._plan is None:
            self._plan = self._compute_plan()
        return self._plan[0] if self._plan else None

    def _compute_plan(self) -> list[str]:
        at_start = len(self._history) == 1 or all(
            command not in self._history[i - 1][0]["admissible_commands"]
            for i, (_, command) in enumerate(self._history) if i > 0
        )
        cache_file = None
        if at_start:  # the initial plan is a pure function of the game: cache it across runs
            digest = hashlib.sha256(
                json.dumps([self._game_data[k] for k in ("pddl_domain", "grammar", "pddl_problem")]).encode()
            ).hexdigest()
            cache_file = plan_cache_dir() / f"{digest}.json"
            try:
                return list(json.loads(cache_file.read_text()))
            except (OSError, ValueError):
                pass
        plan = list(self._pddl._pddl_state.replan(self._pddl._entity_infos))
        if cache_file is not None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(plan))
            os.replace(tmp, cache_file)
        return plan

    def _close(self) -> None:
        pddl, self._pddl, self._engine = self._pddl, None, None
        self._state, self._history, self._loaded, self._expert = None, [], None, None
        lib = getattr(pddl, "downward_lib", None)
        if lib is not None:
            # Free the planner's task and search memory. The library copy itself stays mapped until the
            # process exits: dlclose-ing it (fast_downward.close_lib) made a later dlopen of another copy
            # crash in our tests. Run envs in processes to get everything back.
            lib.cleanup()
            pddl.downward_lib = None
