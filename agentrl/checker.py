"""``check_env``: Gymnasium's checker plus the text contract of :mod:`agentrl.core`.

Each failed rule raises :class:`EnvCheckError` with a message that starts with the rule's name, so a
failing test says what is broken, not just that something is.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import gymnasium as gym

from agentrl.core import REQUIRED_INFO_KEYS, EpisodeOver

#: Actions every env must survive: empty, huge, control characters, unicode, markup.
GARBAGE_ACTIONS: tuple[str, ...] = (
    "",
    "   ",
    "x" * 100_000,
    "\x00\x01\x02\x1b[31m\r\n\t\x7f",
    "ß→中文 🤖 \u202e ñ",
    "click[",
    "search[]",
    "<action></action>",
    "go north\ngo south\nquit",
    "]]]][[[[",
)


class EnvCheckError(AssertionError):
    """An environment broke a rule of the agentrl contract."""


def _fail(rule: str, message: str) -> None:
    raise EnvCheckError(f"[{rule}] {message}")


def _check_info(info: Any, where: str, *, reset: bool) -> None:
    if not isinstance(info, dict):
        _fail("info-type", f"{where} returned info of type {type(info).__name__}, expected dict")
    missing = [k for k in REQUIRED_INFO_KEYS if k not in info]
    if missing:
        _fail("info-keys", f"{where} info misses required key(s): {', '.join(missing)}")
    if not isinstance(info["task_id"], str):
        _fail("info-keys", f"{where} info['task_id'] must be a str, got {type(info['task_id']).__name__}")
    if not isinstance(info["turn"], int):
        _fail("info-keys", f"{where} info['turn'] must be an int")
    if not isinstance(info["won"], bool):
        _fail("info-keys", f"{where} info['won'] must be a bool")
    progress = info["progress"]
    if not isinstance(progress, float) or not 0.0 <= progress <= 1.0:
        _fail("info-keys", f"{where} info['progress'] must be a float in [0, 1], got {progress!r}")
    if info["won"] and progress != 1.0:
        _fail("info-keys", f"{where} info['progress'] must be 1.0 when won, got {progress}")
    if not isinstance(info["invalid_action"], bool):
        _fail("info-keys", f"{where} info['invalid_action'] must be a bool")
    adm = info["admissible_actions"]
    if adm is not None and not (isinstance(adm, list) and all(isinstance(a, str) for a in adm)):
        _fail("info-keys", f"{where} info['admissible_actions'] must be None or a list of str")
    if reset and "instruction" in info and not isinstance(info["instruction"], str):
        _fail("info-keys", f"{where} info['instruction'] must be a str")


def _check_step_result(result: Any, where: str) -> bool:
    if not (isinstance(result, tuple) and len(result) == 5):
        _fail("step-api", f"{where} must return (obs, reward, terminated, truncated, info)")
    obs, reward, terminated, truncated, info = result
    if not isinstance(obs, str):
        _fail("obs-type", f"{where} returned an observation of type {type(obs).__name__}, expected str")
    if not isinstance(reward, float) or not math.isfinite(reward):
        _fail("step-api", f"{where} returned a reward {reward!r}, expected a finite float")
    if not (isinstance(terminated, bool) and isinstance(truncated, bool)):
        _fail("step-api", f"{where} must return bool terminated and truncated")
    _check_info(info, where, reset=False)
    return terminated or truncated


def check_reset_output(env: gym.Env, result: Any) -> None:
    """Raise :class:`EnvCheckError` unless ``result`` is a valid ``reset`` return of ``env``.

    For tests that drive an env themselves (fuzzing, long runs) and check every turn.
    """
    if not (isinstance(result, tuple) and len(result) == 2):
        _fail("reset-api", "reset must return (obs, info)")
    obs, info = result
    if not isinstance(obs, str):
        _fail("obs-type", f"reset returned an observation of type {type(obs).__name__}, expected str")
    if not env.observation_space.contains(obs):
        _fail("obs-space", "the first observation is not in observation_space")
    _check_info(info, "reset", reset=True)
    if info["turn"] != 0:
        _fail("info-keys", f"reset info['turn'] is {info['turn']}, expected 0")


def check_step_output(env: gym.Env, result: Any, *, action: str, turn: int) -> bool:
    """Raise :class:`EnvCheckError` unless ``result`` is a valid return of ``env.step(action)`` at ``turn``.

    Checks types, the info keys and their ranges, ``info["turn"] == turn``, that ``truncated`` is
    set exactly when the turn budget ran out, and that an empty action is flagged invalid. Returns
    whether the episode is over.
    """
    shown = repr(action[:30]) + ("..." if len(action) > 30 else "")
    where = f"step({shown}) at turn {turn}"
    done = _check_step_result(result, where)
    obs, _, terminated, truncated, info = result
    if not env.observation_space.contains(obs):
        _fail("obs-space", f"{where} returned an observation outside observation_space")
    if info["turn"] != turn:
        _fail("info-keys", f"{where}: info['turn'] is {info['turn']}")
    limit = getattr(env.unwrapped, "max_turns", None)
    if limit is not None and truncated != (not terminated and turn >= limit):
        _fail("max-turns", f"{where}: truncated={truncated} with max_turns={limit}")
    if action.strip() == "" and not info["invalid_action"]:
        _fail("garbage-action", f"{where} did not set invalid_action=True")
    return done


def check_env(
    env: gym.Env,
    *,
    seed: int = 0,
    task: str | None = None,
    gymnasium_checks: bool = True,
    on_progress: Callable[[int, int], Any] | None = None,
) -> None:
    """Raise :class:`EnvCheckError` if ``env`` breaks the agentrl contract; return ``None`` if it holds.

    ``task`` picks the task to test on (default: the first of the env's panel). The env is closed
    at the end (twice: a second ``close`` must be harmless). ``on_progress(done, total)`` follows the
    checks (resets, garbage actions, steps to the turn budget, Gymnasium's checks) for a progress bar.
    """
    env = env.unwrapped
    budget = min(getattr(env, "max_turns", 100), 500)
    total, done_checks = 4 + len(GARBAGE_ACTIONS) + budget + 2, 0

    def advance(n: int = 1) -> None:
        nonlocal done_checks
        done_checks = min(total, done_checks + n)
        if on_progress is not None:
            on_progress(done_checks, total)

    for name in ("task_ids", "expert_action"):
        if not callable(getattr(env, name, None)):
            _fail("api", f"env has no {name}() method (subclass agentrl.TextEnv)")
    try:
        panel = env.task_ids()
    except Exception as exc:
        _fail("task-ids", f"task_ids() raised {type(exc).__name__}: {exc}")
    if not isinstance(panel, list) or not panel or not all(isinstance(t, str) for t in panel):
        _fail("task-ids", "task_ids() must return a non-empty list of str")
    task = task or panel[0]
    options = {"task": task}

    # reset: types, info, determinism
    obs, info = env.reset(seed=seed, options=options)
    if not isinstance(obs, str):
        _fail("obs-type", f"reset returned an observation of type {type(obs).__name__}, expected str")
    _check_info(info, "reset", reset=True)
    if info["task_id"] != task:
        _fail("info-keys", f"reset(options={{'task': {task!r}}}) reported task_id {info['task_id']!r}")
    if not env.observation_space.contains(obs):
        _fail("obs-space", "the first observation is not in observation_space")
    obs2, _ = env.reset(seed=seed, options=options)
    if obs2 != obs:
        _fail("seed-determinism", f"two resets with seed={seed} and task={task!r} gave different first observations")
    free_a, _ = env.reset(seed=seed)
    free_b, _ = env.reset(seed=seed)
    if free_a != free_b:
        _fail("seed-determinism", f"two resets with seed={seed} and no task gave different first observations")
    advance(4)

    # garbage actions never raise, and are flagged
    for action in GARBAGE_ACTIONS:
        env.reset(seed=seed, options=options)
        shown = repr(action[:30]) + ("..." if len(action) > 30 else "")
        try:
            result = env.step(action)
        except Exception as exc:
            _fail("garbage-action", f"step({shown}) raised {type(exc).__name__}: {exc}")
        _check_step_result(result, f"step({shown})")
        if action.strip() == "" and not result[4]["invalid_action"]:
            _fail("garbage-action", f"step({shown}) did not set invalid_action=True")
        advance()

    # the turn budget ends an episode, and a finished episode refuses to step
    env.reset(seed=seed, options=options)
    limit = getattr(env, "max_turns", 100)
    done = False
    for turn in range(1, min(limit, 500) + 1):
        result = env.step("")
        done = _check_step_result(result, f"step #{turn}")
        if result[4]["turn"] != turn:
            _fail("info-keys", f"info['turn'] is {result[4]['turn']} after {turn} steps")
        advance()
        if done:
            advance(budget - turn)
            break
    if done:
        try:
            env.step("look")
        except EpisodeOver:
            pass
        except Exception as exc:
            _fail("episode-over", f"step after the end raised {type(exc).__name__}, expected agentrl.EpisodeOver")
        else:
            _fail("episode-over", "step after the end of an episode did not raise agentrl.EpisodeOver")
    elif limit <= 500:
        _fail("max-turns", f"episode did not end after max_turns={limit} steps")

    if gymnasium_checks:
        from gymnasium.utils.env_checker import check_env as gym_check_env

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                gym_check_env(env, skip_render_check=True, skip_close_check=True)
            except AssertionError as exc:
                _fail("gymnasium", str(exc))
    advance()

    try:
        env.close()
        env.close()
    except Exception as exc:
        _fail("double-close", f"close() raised {type(exc).__name__}: {exc}")
    advance()
