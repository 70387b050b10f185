"""Code-execution sandboxes (imported as ``agentrl.sandboxes``).

``get_sandbox("auto")`` returns a Docker sandbox when a daemon answers, else bubblewrap;
``check_backends()`` says which work here and why the others do not. See :mod:`.base` for the
interface (``run``, ``open``/``exec``/``close``, :class:`Limits`, :class:`RunResult`).
Backends import their dependencies (the docker SDK) only when used.
"""

from agentrl.sandboxes.auto import BACKENDS, check_backends, get_sandbox
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
    "get_sandbox",
]
