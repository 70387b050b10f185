"""``agentrl/ScienceWorld-v0``: the 30 ScienceWorld tasks on the real engine (a JVM driven over py4j).

A task id names a task and a variation, ``"<task>/<variation>"`` (``"boil/14"``); ``task_ids(split)``
is ScienceWorld's own train / dev / test panel (its ``get_variations_*``), task by task in the
benchmark's order (1-1 boil ... 10-2 mendelian-genetics-unknown-plant), variations ascending.

Reward and outcome follow the engine's score (0..100): ``progress = score / 100`` (partial credit),
the reward of a turn is the change in ``progress``, ``won`` is ScienceWorld's success (task completed
with a score of 100). A negative score means the task was failed for good (e.g. focusing on the wrong
object): the episode ends, ``progress`` is clamped to 0 and the raw score stays in ``info["score"]``.

Speed: ScienceWorld's own ``step`` also recomputes look, inventory, the task description and every
valid action-object combination on every call; here a turn is the engine step plus the score, and
admissible actions are fetched only when asked for (``admissible_actions=True``, or
:meth:`ScienceWorldEnv.valid_actions` for the current state). The expert's gold path is generated
on the first :meth:`~ScienceWorldEnv.expert_action` of an episode (it costs 0.3-15 s per task), so
resets stay cheap for agents that never ask.

Engine quirk: objects that look alike (three wood cups of paint) get their descriptive names
("cup containing blue paint in art studio", "blue paint in wood cup") afresh on every call, so two
lists of admissible actions for the same state can word those objects differently; both wordings
are understood. Room listings are put in a fixed (sorted) order here (the engine's order changes
from load to load), so a task's first observation is always the same text.

One JVM serves one env and is reused across resets; ``close`` ends it. If it dies mid-episode the
episode ends as failed with ``info["engine_error"]`` saying why, and the next ``reset`` starts a
fresh JVM.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from agentrl.core import PromptSpec, TextEnv, clean_action
from agentrl.environments.scienceworld.engine import Engine
from agentrl.environments.scienceworld.panels import SPLITS, load_panels, task_names

#: What the engine answers to text it cannot parse.
UNPARSED_REPLY = "No known action matches that input."
#: Simplifications the engine knows ("easy" = all of them but noElectricalAction's electrical tasks).
SIMPLIFICATIONS = (
    "easy",
    "teleportAction",
    "selfWateringFlowerPots",
    "openContainers",
    "openDoors",
    "noElectricalAction",
)


@dataclass
class _Episode:
    """Per-episode state: what was loaded, the score so far, and what was sent to the engine."""

    task: str
    variation: int
    instruction: str
    score: int  # the engine's raw score, 0..100 (negative = failed)
    history: list[str] = field(default_factory=list)  # actions sent to the engine, in order
    gold: list[str] | None = None  # the gold path, generated on the first expert_action()
    gold_next: int = 0  # index of the next gold action (advances when the taken action matches)
    ended_by: str | None = None  # why the engine can no longer serve this episode
    admissible: list[str] | None = None  # valid actions of the current state, when fetched


def canonical_listing(text: str) -> str:
    """Put the objects of a room listing in a fixed order, so the same state always reads the same.

    The engine's order of a room's objects changes from load to load (three "wood cup"s with
    different paints, or "inclined plane H" before "inclined plane B"). Each run of tab-indented
    lines at one indentation is sorted, a line carrying its deeper-indented continuation lines with
    it; numbered menus (``0:\t...``) and unindented text are left as the engine wrote them.
    """
    if "\t" not in text:
        return text
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        if not _listed(lines[i]):
            out.append(lines[i])
            i += 1
            continue
        indent = _indent(lines[i])
        blocks: list[list[str]] = []
        while i < len(lines) and _listed(lines[i]) and _indent(lines[i]) == indent:
            j = i + 1
            while j < len(lines) and lines[j].startswith("\t") and _indent(lines[j]) > indent:
                j += 1
            blocks.append(lines[i:j])
            i = j
        for block in sorted(blocks):
            out.extend(block)
    return "\n".join(out)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip("\t"))


def _listed(line: str) -> bool:
    body = line.lstrip("\t")
    return line.startswith("\t") and not body[:1].isdigit()


def _ranges(values: Sequence[int]) -> str:
    """``[0, 1, 2, 5, 6]`` -> ``"0-2, 5-6"``."""
    parts: list[str] = []
    start = prev = None
    for v in values:
        if prev is not None and v == prev + 1:
            prev = v
            continue
        if start is not None:
            parts.append(f"{start}-{prev}" if prev != start else str(start))
        start = prev = v
    if start is not None:
        parts.append(f"{start}-{prev}" if prev != start else str(start))
    return ", ".join(parts)


class ScienceWorldEnv(TextEnv):
    """A ScienceWorld task variation; see the module docstring for reward, outcome and speed.

    Args:
        split: ``"train"``, ``"dev"`` or ``"test"`` (ScienceWorld's own panels).
        task: restrict the panels to one task name or a list of them (default: all 30).
        simplification: ScienceWorld's simplification string; ``"easy"`` as in the papers.
        max_turns: turn budget per episode (truncation).
        admissible_actions: put the valid action-object combinations in every ``info``
            (costs one engine call per turn; off by default).
        jvm_heap: the JVM's maximum heap (``-Xmx``), e.g. ``"1g"`` or ``"512m"``.
        engine_timeout: seconds any one engine call may take before the JVM counts as hung.
    """

    splits: ClassVar[tuple[str, ...]] = SPLITS
    prompt: ClassVar[PromptSpec] = PromptSpec(
        "You are an agent in a simulated science laboratory and home. Complete the science task step by step.",
        max_admissible=40,
    )

    def __init__(
        self,
        *,
        split: str | None = None,
        task: str | Sequence[str] | None = None,
        simplification: str = "easy",
        max_turns: int = 100,
        admissible_actions: bool = False,
        jvm_heap: str = "1g",
        engine_timeout: float = 300.0,
        render_mode: str | None = None,
    ):
        super().__init__(split=split, max_turns=max_turns, render_mode=render_mode)
        names = task_names()
        chosen = names if task is None else ([task] if isinstance(task, str) else list(task))
        unknown = [t for t in chosen if t not in names]
        if unknown or not chosen:
            raise ValueError(
                f"unknown ScienceWorld task(s) {unknown or chosen!r}; choose from {', '.join(names)}"
            )
        for part in simplification.split(","):
            if part and part not in SIMPLIFICATIONS:
                raise ValueError(
                    f"unknown ScienceWorld simplification {part!r}; use a comma-separated subset of "
                    f"{', '.join(SIMPLIFICATIONS)} (or '' for none)"
                )
        self.tasks = chosen
        self.simplification = simplification
        self.with_admissible = bool(admissible_actions)
        self.jvm_heap = str(jvm_heap)
        Engine.check_heap(self.jvm_heap)
        self.engine_timeout = float(engine_timeout)
        self._engine: Engine | None = None
        self._episode: _Episode | None = None

    # -- panels and task ids --------------------------------------------------------------------

    def task_ids(self, split: str | None = None) -> list[str]:
        split = split or self.split
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        panels = load_panels()
        return [f"{name}/{v}" for name in self.tasks for v in panels[name][split]]

    def task_type(self, task_id: str) -> str | None:
        """The ScienceWorld task an id is a variation of (``"boil/14"`` -> ``"boil"``)."""
        name, sep, _ = str(task_id).rpartition("/")
        return name if sep and name in load_panels() else None

    @staticmethod
    def parse_task_id(task_id: str) -> tuple[str, int]:
        """``"boil/14"`` -> ``("boil", 14)``; a clear ``ValueError`` naming the valid choices otherwise."""
        panels = load_panels()
        name, sep, variation = str(task_id).rpartition("/")
        if not sep or name not in panels:
            raise ValueError(
                f"unknown ScienceWorld task {task_id!r}: task ids look like '<task>/<variation>' (e.g. 'boil/14') "
                f"with task one of {', '.join(task_names())}"
            )
        panel = panels[name]
        if not variation.isdigit() or int(variation) >= panel["max_variations"]:
            raise ValueError(
                f"unknown variation {variation!r} of ScienceWorld task {name!r}: it has variations "
                f"0-{panel['max_variations'] - 1} (train {_ranges(panel['train'])}; dev {_ranges(panel['dev'])}; "
                f"test {_ranges(panel['test'])})"
            )
        return name, int(variation)

    # -- engine ---------------------------------------------------------------------------------

    @property
    def engine(self) -> Engine | None:
        """The JVM currently serving this env (``None`` before the first reset or after ``close``)."""
        return self._engine

    @property
    def jvm_pid(self) -> int | None:
        """Process id of the JVM serving this env, or ``None`` when none is running."""
        return self._engine.pid if self._engine is not None else None

    def _live_engine(self) -> Engine:
        if self._engine is not None and not self._engine.alive():
            self._engine.close()
            self._engine = None
        if self._engine is None:
            self._engine = Engine(heap=self.jvm_heap, timeout=self.engine_timeout)
        return self._engine

    def _drop_engine(self) -> str:
        """Forget a dead or hung JVM (killing it if needed) and say what happened to it."""
        engine, self._engine = self._engine, None
        if engine is None:
            return "the ScienceWorld JVM is gone"
        reason = engine.why_dead()
        engine.close()
        return reason

    def _score(self, engine: Engine) -> int:
        return int(round(100 * engine.server.getScore()))

    # -- episodes -------------------------------------------------------------------------------

    def _reset_task(self, task_id: str) -> tuple[str, dict[str, Any]]:
        from py4j.protocol import Py4JError, Py4JJavaError

        name, variation = self.parse_task_id(task_id)
        if "noElectricalAction" in self.simplification and (
            "power-component" in name or "conductivity" in name
        ):
            raise ValueError(
                f"task {name!r} needs electrical actions; drop 'noElectricalAction' from simplification"
            )
        for attempt in (1, 2):  # a JVM that died between episodes is replaced once
            engine = self._live_engine()
            try:
                engine.server.load(name, variation, self.simplification, False)
                look = engine.server.step("look around")
                instruction = engine.server.getTaskDescription()
                score = self._score(engine)
                admissible = self._fetch_admissible(engine) if self.with_admissible else None
                break
            except Py4JJavaError:
                raise
            except Py4JError as exc:
                reason = self._drop_engine()
                if attempt == 2:
                    raise RuntimeError(f"could not start ScienceWorld task {task_id!r}: {reason}") from exc
        self._episode = _Episode(name, variation, instruction, score, admissible=admissible)
        info = self._info(self._episode)
        info.update(instruction=instruction, variation=variation, simplification=self.simplification, task_type=name)
        info["admissible_actions"] = admissible
        return f"{instruction}\n\n{canonical_listing(look)}", info

    def _step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        from py4j.protocol import Py4JError, Py4JJavaError

        ep = self._episode
        text, problem = clean_action(action)
        if problem is not None:
            info = self._info(ep)
            info["invalid_action"] = True
            info["admissible_actions"] = self._admissible_or_none()
            return f"Invalid action ({problem}). {UNPARSED_REPLY}", 0.0, False, info
        engine = self._engine
        before = self._percent(ep)
        try:
            if engine is None or not engine.alive():  # skip py4j's reconnect attempts (and log noise)
                raise Py4JError("the JVM is gone")
            reply = engine.server.step(text)
            unparsed = reply.strip() == UNPARSED_REPLY
            ep.score = self._score(engine)
            completed = bool(engine.server.getCompleted())
            if unparsed and ep.admissible is not None:  # unparsed input changes nothing
                admissible = ep.admissible
            else:
                admissible = self._fetch_admissible(engine) if self.with_admissible else None
        except Py4JJavaError as exc:  # the engine threw on this input but is still up: a bad action
            if engine is not None and engine.alive():
                info = self._info(ep)
                info["invalid_action"] = True
                info["engine_exception"] = _java_message(exc)
                return (
                    f"Invalid action (the simulator could not process it). {UNPARSED_REPLY}",
                    0.0,
                    False,
                    info,
                )
            return self._engine_failed(ep)
        except Py4JError:
            return self._engine_failed(ep)
        ep.history.append(text)
        if ep.gold is not None and ep.gold_next < len(ep.gold) and text == ep.gold[ep.gold_next]:
            ep.gold_next += 1
        info = self._info(ep, completed=completed)
        info["invalid_action"] = unparsed
        info["admissible_actions"] = ep.admissible = admissible
        terminated = completed or ep.score < 0
        reward = (self._percent(ep, completed) - before) / 100  # whole percents: 0.34, not 0.3399999
        return canonical_listing(reply), reward, terminated, info

    def _engine_failed(self, ep: _Episode) -> tuple[str, float, bool, dict[str, Any]]:
        if self._engine is not None or ep.ended_by is None:
            ep.ended_by = self._drop_engine()
        info = self._info(ep)
        info["engine_error"] = ep.ended_by
        return f"The episode ended: the simulator failed ({ep.ended_by}).", 0.0, True, info

    def _progress(self, ep: _Episode, completed: bool = False) -> float:
        return self._percent(ep, completed) / 100

    @staticmethod
    def _percent(ep: _Episode, completed: bool = False) -> int:
        """Progress in whole percent: the score clamped to 0..100 (100 when won)."""
        return 100 if completed and ep.score >= 100 else max(0, min(100, ep.score))

    def _info(self, ep: _Episode, *, completed: bool = False) -> dict[str, Any]:
        won = completed and ep.score >= 100
        return {"won": won, "progress": self._progress(ep, completed), "score": ep.score}

    # -- admissible actions ---------------------------------------------------------------------

    def _fetch_admissible(self, engine: Engine) -> list[str]:
        return sorted(set(engine.lines(engine.server.getValidActionObjectCombinations())))

    def _admissible_or_none(self) -> list[str] | None:
        """The current state's list for a turn that never reached the engine (None when off)."""
        ep = self._episode
        if not self.with_admissible or self._engine is None:
            return None
        if ep.admissible is None:
            try:
                ep.admissible = self._fetch_admissible(self._engine)
            except Exception:  # the next real step reports a dead engine properly
                return None
        return ep.admissible

    def valid_actions(self) -> list[str]:
        """The valid action-object combinations of the current state, fetched now (sorted)."""
        if self._engine is None or self._episode is None:
            raise RuntimeError("no episode is running; call reset() first")
        return self._fetch_admissible(self._engine)

    # -- expert ---------------------------------------------------------------------------------

    def expert_action(self) -> str | None:
        """The next action of ScienceWorld's gold path, or ``None`` when it is used up.

        The gold path is a fixed action sequence from the task's start. It is generated on the first
        call of an episode: the task is reloaded with gold-path generation on and the actions taken
        so far are replayed. Off the path (an action that is not the next gold action) the expert
        keeps proposing the next gold action, which may no longer fit the state.
        """
        ep = self._episode
        if ep is None or self.episode_over or ep.ended_by is not None:
            return None
        gold = self.gold_path()
        return gold[ep.gold_next] if ep.gold_next < len(gold) else None

    def gold_path(self) -> list[str]:
        """ScienceWorld's gold action sequence for the current episode's task (from its start).

        Empty when the engine failed while generating it.
        """
        ep = self._episode
        if ep is None:
            raise RuntimeError("no episode is running; call reset() first")
        if ep.gold is None:
            from py4j.protocol import Py4JError

            try:
                self._load_gold(ep)
            except Py4JError:
                ep.ended_by = self._drop_engine()
                return []
        return list(ep.gold)

    def _load_gold(self, ep: _Episode) -> None:
        engine = self._engine
        engine.server.load(ep.task, ep.variation, self.simplification, True)
        gold = engine.lines(engine.server.getGoldActionSequence())
        engine.server.step("look around")
        nxt = 0
        for text in ep.history:  # replay: the reload put the task back at its start
            engine.server.step(text)
            if nxt < len(gold) and text == gold[nxt]:
                nxt += 1
        ep.score = self._score(engine)
        ep.gold, ep.gold_next = gold, nxt

    def _close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None
        self._episode = None


def _java_message(exc: Exception) -> str:
    try:
        return str(exc.java_exception.toString())[:500]  # type: ignore[attr-defined]
    except Exception:
        return type(exc).__name__
