"""The one exception the store raises for problems a user can act on."""

from __future__ import annotations

from agentrl.errors import AgentrlError


class StoreError(AgentrlError):
    """An unusable store URL or database (unreachable, corrupt, wrong schema, read-only, full) or a rejected write.

    ``str(error)`` is one line that names the store; ``hint`` (optional) says what to do about it.
    """
