"""ALFWorld data: where it lives, which games form each panel, and ``agentrl data fetch|check alfworld``.

The data root is the folder ``alfworld-download`` fills (``$ALFWORLD_DATA``): ``json_2.1.1/<split>/<task
folder>/<trial>/`` with ``game.tw-pddl`` (domain, grammar and problem in one JSON file), ``traj_data.json``
and ``initial_state.pddl``. A task id is the game file's path relative to the root, e.g.
``json_2.1.1/valid_unseen/pick_and_place_simple-Mug-None-Desk-308/trial_T20190908_.../game.tw-pddl``;
it is the same whichever data version (json_2.1.1 ``put X in/on Y`` or the patched 2.1.2 ``move X to
Y``) a user has, because the patch rewrites the files in place.

Panels are the games ALFWorld's own ``AlfredTWEnv.collect_game_files`` loads (its filter: no
``movable``/``Sliced`` trial, a task type among the six, a game file marked ``solvable``), sorted by
task id. ALFWorld itself keeps ``os.walk`` order, which differs between file systems; sorting gives
the same panel everywhere. A file that cannot be read stays in its panel so that it fails as one task
(with a clear message at reset), never the whole panel.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

from agentrl.errors import AgentrlError, UserError

#: ALFWorld's task types, numbered as in its configs (``env.task_types``).
TASK_TYPES: dict[int, str] = {
    1: "pick_and_place_simple",
    2: "look_at_obj_in_light",
    3: "pick_clean_then_place_in_recep",
    4: "pick_heat_then_place_in_recep",
    5: "pick_cool_then_place_in_recep",
    6: "pick_two_obj_and_place",
}

#: split -> folder under the data root. ``valid_seen`` is ALFWorld's in-distribution evaluation panel,
#: ``valid_unseen`` the out-of-distribution one, ``valid_train`` its 200-game subset of train.
SPLIT_DIRS: dict[str, str] = {
    "train": "json_2.1.1/train",
    "valid_seen": "json_2.1.1/valid_seen",
    "valid_unseen": "json_2.1.1/valid_unseen",
    "valid_train": "json_2.1.1/valid_train",
}

FETCH_COMMAND = "agentrl data fetch alfworld"
_ALFWORLD_DEFAULT_CACHE = Path("~/.cache/alfworld").expanduser()


class DataRootError(AgentrlError, FileNotFoundError):
    """The ALFWorld data root is missing or holds no games (the message says how to get them)."""


def _repo_sibling() -> Path | None:
    """``<repo>/../shared/data/alfworld`` when agentrl runs from a checkout (CI, tests)."""
    repo = Path(__file__).resolve().parents[2]
    if not (repo / "pyproject.toml").is_file():
        return None
    return repo.parent / "shared" / "data" / "alfworld"


def _has_games(root: Path) -> bool:
    return any((root / d).is_dir() for d in SPLIT_DIRS.values())


def resolve_root(data_root: str | os.PathLike[str] | None = None) -> Path:
    """The data root: ``data_root``, else ``$ALFWORLD_DATA``, else the checkout's sibling
    ``../shared/data/alfworld``, else alfworld's default cache ``~/.cache/alfworld``.

    An explicit choice (the argument, or ``ALFWORLD_DATA`` naming another folder than alfworld's
    default cache) that holds no games is an error naming it; it never falls through to another folder.
    """
    if data_root is not None:
        return _validated(Path(data_root).expanduser(), "as given")
    env_value = os.environ.get("ALFWORLD_DATA")
    if env_value:
        chosen = Path(env_value).expanduser()
        # `import alfworld` sets ALFWORLD_DATA to its (often empty) default cache: not a user's choice.
        if chosen != _ALFWORLD_DEFAULT_CACHE or _has_games(chosen):
            return _validated(chosen, "$ALFWORLD_DATA")
    sibling = _repo_sibling()
    if sibling is not None and _has_games(sibling):
        return sibling
    return _validated(_ALFWORLD_DEFAULT_CACHE, "alfworld's default cache")


def _validated(root: Path, source: str) -> Path:
    if not root.is_dir():
        raise DataRootError(
            f"ALFWorld data root {root} ({source}) does not exist; run `{FETCH_COMMAND} --dest {root}` "
            "or set ALFWORLD_DATA to a folder holding json_2.1.1/"
        )
    if not _has_games(root):
        raise DataRootError(
            f"ALFWorld data root {root} ({source}) holds no games (no json_2.1.1/<split>/ folder); "
            f"run `{FETCH_COMMAND} --dest {root}` or set ALFWORLD_DATA to a folder holding json_2.1.1/"
        )
    return root.resolve()


def split_dir(root: Path, split: str) -> str:
    """The folder (relative to ``root``) of ``split``'s games.

    ``train`` falls back to ``valid_train`` (ALFWorld's 200-game subset of train) with a warning when
    the full train folder is absent, as in the data shipped for CI.
    """
    if split not in SPLIT_DIRS:
        raise ValueError(f"unknown ALFWorld split {split!r}; choose one of {', '.join(SPLIT_DIRS)}")
    folder = SPLIT_DIRS[split]
    if split == "train" and not (root / folder).is_dir() and (root / SPLIT_DIRS["valid_train"]).is_dir():
        warnings.warn(
            f"ALFWorld: {root / folder} is missing; the train panel is valid_train (a subset of train)",
            stacklevel=3,
        )
        folder = SPLIT_DIRS["valid_train"]
    return folder


def _game_is_loaded_by_alfworld(trial: Path) -> bool:
    """ALFWorld's loading filter for one trial folder; unreadable files are kept (they fail as tasks)."""
    if "movable" in str(trial) or "Sliced" in str(trial):
        return False
    try:
        task_type = json.loads((trial / "traj_data.json").read_text())["task_type"]
    except (OSError, ValueError, KeyError, TypeError):
        return True
    if task_type not in TASK_TYPES.values():
        return False
    game = trial / "game.tw-pddl"
    if not game.is_file():
        return False
    try:
        solvable = json.loads(game.read_text()).get("solvable")
    except (OSError, ValueError, AttributeError):
        return True
    return bool(solvable)


@lru_cache(maxsize=16)
def _panel(root: Path, folder: str, mtime_ns: int) -> tuple[str, ...]:
    base = root / folder
    found = []
    for traj in base.rglob("traj_data.json"):
        trial = traj.parent
        if _game_is_loaded_by_alfworld(trial):
            found.append((trial / "game.tw-pddl").relative_to(root).as_posix())
    return tuple(sorted(found))


def panel(root: Path, split: str) -> list[str]:
    """The ordered task ids of ``split`` under ``root`` (see the module docstring)."""
    folder = split_dir(root, split)
    base = root / folder
    if not base.is_dir():
        return []
    return list(_panel(root, folder, base.stat().st_mtime_ns))


def task_type_of(task_id: str) -> str | None:
    """The ALFWorld task type named by a task id's task folder (``pick_two_obj_and_place-...``)."""
    parts = Path(task_id).parts
    for part in parts:
        prefix = part.split("-", 1)[0]
        if prefix in TASK_TYPES.values():
            return prefix
    return None


def data_version(game_data: dict[str, Any]) -> str:
    """``"2.1.1"`` (``put X in/on Y``, no ``help``) or ``"2.1.2"`` (patched: ``move X to Y`` and ``help``)."""
    return "2.1.2" if "move {o} to {r}" in game_data.get("grammar", "") else "2.1.1"


# -- agentrl data fetch | check --------------------------------------------------------------------


def fetch(dest: Path | None = None) -> Path:
    """Download the official ALFWorld text data with alfworld's own ``alfworld-download``.

    Without a network (or without alfworld installed) raise ``UserError`` saying what to do.
    """
    root = Path(dest).expanduser() if dest is not None else Path(
        os.environ.get("ALFWORLD_DATA") or _ALFWORLD_DEFAULT_CACHE
    ).expanduser()
    script = shutil.which("alfworld-download")
    if script is None:
        raise UserError(
            "alfworld-download was not found (alfworld is not installed)", hint="pip install 'agentrl[alfworld]'"
        )
    try:
        socket.getaddrinfo("github.com", 443)
    except OSError as exc:
        raise UserError(
            f"no network here ({exc.strerror or exc}): cannot download ALFWorld data into {root}",
            hint=f"on a machine with a network run `{FETCH_COMMAND} --dest DIR`, copy DIR here and set ALFWORLD_DATA=DIR",
        ) from None
    root.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, script, "--data-dir", str(root)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"alfworld-download failed: {last}", hint=f"retry `{FETCH_COMMAND} --dest {root}`")
    return root


def check(root: Path | None = None) -> dict[str, object]:
    """What a data root holds: per split, the games on disk and those in the panel (ALFWorld's filter)."""
    try:
        resolved = resolve_root(root)
    except DataRootError as exc:
        raise UserError(str(exc), hint=f"{FETCH_COMMAND} --dest DIR") from None
    report: dict[str, object] = {"root": str(resolved)}
    sample_game: Path | None = None
    for split, folder in SPLIT_DIRS.items():
        base = resolved / folder
        if not base.is_dir():
            report[split] = "missing" + (" (train panel falls back to valid_train)" if split == "train" else "")
            continue
        on_disk = sum(1 for _ in base.rglob("game.tw-pddl"))
        games = panel(resolved, split)
        report[split] = f"{len(games)} games in the panel ({on_disk} game files on disk)"
        if games and sample_game is None:
            sample_game = resolved / games[0]
    if sample_game is not None:
        try:
            version = data_version(json.loads(sample_game.read_text()))
        except (OSError, ValueError):
            version = "unreadable"
        report["data_version"] = {
            "2.1.1": "json_2.1.1 (`put X in/on Y`, agentrl patches it in memory)",
            "2.1.2": "json_2.1.2 (`move X to Y`, `help`)",
        }.get(version, version)
    return report
