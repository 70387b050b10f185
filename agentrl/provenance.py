"""Where a result came from: the agentrl commit it was produced with.

Runs in the store, run directories and evaluation reports record :func:`git_sha`, so a number can
be traced to the code that made it (the README promises that results carry the git SHA).
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

#: The checkout ``agentrl`` is imported from (the parent of the package directory).
SOURCE_ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def git_sha() -> str | None:
    """The commit of the agentrl checkout in use, ``-dirty`` appended when tracked files were changed.

    ``None`` when agentrl is not running from a git checkout (a wheel install) and
    ``$AGENTRL_GIT_SHA`` is not set; that variable wins when set (a copy of the tree without ``.git``,
    as on a remote machine). Cached: asked once per process.
    """
    if os.environ.get("AGENTRL_GIT_SHA"):
        return os.environ["AGENTRL_GIT_SHA"]
    if not (SOURCE_ROOT / ".git").exists():
        return None
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(SOURCE_ROOT), *args], capture_output=True, text=True,
                                  check=True, timeout=10).stdout.strip()  # fmt: skip

        sha = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha
