"""Code-execution sandboxes (imported as ``agentrl.sandboxes``).

``get_sandbox("auto")`` returns a Docker sandbox when a daemon answers, else bubblewrap;
``check_backends()`` says which work here and why the others do not; ``cleanup_stale()`` repairs what
a killed supervisor left (containers, mounted workspaces, cgroups). See :mod:`.base` for the interface
(``run``, ``open``/``exec``/``close``, :class:`Limits`, :class:`RunResult`, :class:`Reason`).
Backends import their dependencies (the docker SDK) only when used.
"""

from agentrl.sandboxes.auto import BACKENDS, check_backends, cleanup_stale, get_sandbox
from agentrl.sandboxes.base import (
    WORKSPACE,
    Limits,
    Reason,
    RunResult,
    Sandbox,
    SandboxUnavailable,
    Session,
)

__all__ = [
    "BACKENDS",
    "WORKSPACE",
    "Limits",
    "Reason",
    "RunResult",
    "Sandbox",
    "SandboxUnavailable",
    "Session",
    "check_backends",
    "cleanup_stale",
    "get_sandbox",
]
