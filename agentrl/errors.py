"""The base of every error agentrl raises for a condition its user can fix.

A user-fixable condition (a bad argument, a missing file or model, an unreachable store or server)
is raised as an :class:`AgentrlError`: ``str(error)`` is one line that says what is wrong and
``hint`` (optional) says what to do about it. The command line prints exactly these two lines and
exits with code 2; every other exception is a bug and keeps its traceback.

The subclasses live next to the code that raises them and keep their historical built-in base as a
second base (``ConfigError`` is still a ``ValueError``, ``UnknownEnvError`` a ``KeyError``), so
callers that caught the built-in type keep working:

==========================  ======================================  ============================
class                       raised when                             module
==========================  ======================================  ============================
``UserError``               a command-line value is wrong           :mod:`agentrl.errors`
``ConfigError``             a recipe config key or value is wrong   :mod:`agentrl.config`
``UnknownEnvError``         no env has that id or alias             :mod:`agentrl.registry`
``MissingDependencyError``  an env's optional package is missing    :mod:`agentrl.registry`
``StoreError``              a store is unusable or refuses a write  :mod:`agentrl.store.errors`
``PolicyError``             a model backend cannot serve            :mod:`agentrl.policies.base`
==========================  ======================================  ============================

Environments and plugins may subclass :class:`AgentrlError` for their own user-fixable conditions
(missing benchmark data, for example).
"""

from __future__ import annotations


class AgentrlError(Exception):
    """A condition the user can fix: one line of message, plus an optional hint saying how."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


class UserError(AgentrlError):
    """A value the user gave (a command-line option, a file, a name) is wrong or unusable."""
