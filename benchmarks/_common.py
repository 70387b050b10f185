"""Helpers for benchmark scripts: one JSON result per benchmark, stamped with the git SHA."""

from __future__ import annotations

import json
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def git_sha() -> str:
    """The commit measured: ``$AGENTRL_GIT_SHA`` when set (a copied tree without .git), else ``git rev-parse HEAD``."""
    import os

    if os.environ.get("AGENTRL_GIT_SHA"):
        return os.environ["AGENTRL_GIT_SHA"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


#: Packages whose versions can change a result; recorded with every benchmark.
PACKAGES = ("agentrl", "torch", "transformers", "tokenizers", "numpy", "textworld", "alfworld", "scienceworld",
            "gymnasium", "sqlalchemy", "triton", "peft", "vllm")  # fmt: skip


def package_versions() -> dict[str, str | None]:
    """Installed versions of :data:`PACKAGES` (None when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def write_result(name: str, data: dict[str, Any]) -> Path:
    """Write ``benchmarks/results/<name>.json`` with the git SHA, package versions, machine and time added."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "git_sha": git_sha(), "machine": platform.platform(),
               "python": platform.python_version(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "versions": package_versions(), **data}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
