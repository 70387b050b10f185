"""ScienceWorld's own train / dev / test variation panels, as shipped in ``panels.json``.

The panels are fixed by the engine (``get_variations_train/dev/test`` of each task), but asking for
them means starting a JVM and loading all 30 tasks (~10 s). ``panels.json`` holds the engine's
answer, keyed by the ``scienceworld`` version that produced it, so ``task_ids`` costs nothing; the
test suite checks the file against the live engine. Regenerate it after a ScienceWorld upgrade with
``python -m agentrl.environments.scienceworld.panels``.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

PANELS_PATH = Path(__file__).with_name("panels.json")
SPLITS: tuple[str, ...] = ("train", "dev", "test")


def task_names() -> list[str]:
    """The 30 task names in ScienceWorld's own order (task ids 1-1, 1-2, ... 10-2)."""
    from scienceworld.constants import TASKS

    def key(task: dict[str, Any]) -> tuple[int, str]:
        topic, sub = task["task_id"].split("-")
        return int(topic), sub

    return [t["task_name"] for t in sorted(TASKS, key=key)]


def build_panels(engine: Any) -> dict[str, dict[str, Any]]:
    """Ask a running :class:`~agentrl.environments.scienceworld.engine.Engine` for every panel."""
    panels: dict[str, dict[str, Any]] = {}
    for name in task_names():
        engine.server.load(name, 0, "", False)
        server = engine.server
        panels[name] = {
            "train": [int(v) for v in server.getVariationsTrain()],
            "dev": [int(v) for v in server.getVariationsDev()],
            "test": [int(v) for v in server.getVariationsTest()],
            "max_variations": int(server.getTaskMaxVariations(name)),
        }
    return panels


@functools.cache
def load_panels() -> dict[str, dict[str, Any]]:
    """``{task_name: {"train": [...], "dev": [...], "test": [...], "max_variations": n}}``."""
    import scienceworld

    data = json.loads(PANELS_PATH.read_text())
    if data["scienceworld"].rsplit(".", 1)[0] != scienceworld.__version__.rsplit(".", 1)[0]:
        raise RuntimeError(
            f"panels.json was made with scienceworld {data['scienceworld']}, but {scienceworld.__version__} "
            "is installed: regenerate it with `python -m agentrl.environments.scienceworld.panels`"
        )
    return data["panels"]


def main() -> None:
    import scienceworld

    from agentrl.environments.scienceworld.engine import Engine

    engine = Engine()
    try:
        panels = build_panels(engine)
    finally:
        engine.close()
    text = json.dumps({"scienceworld": scienceworld.__version__, "panels": panels}, separators=(",", ":"))
    PANELS_PATH.write_text(text + "\n")
    sizes = {s: sum(len(p[s]) for p in panels.values()) for s in SPLITS}
    print(f"wrote {PANELS_PATH}: {len(panels)} tasks, {sizes}")


if __name__ == "__main__":
    main()
