"""The one exception the store raises for problems a user can act on."""

from __future__ import annotations


class StoreError(Exception):
    """An unusable store URL or database (unreachable, corrupt, wrong schema) or a rejected write.

    ``str(error)`` is one line that names the store; ``hint`` (optional) says what to do about it.
    """

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint
