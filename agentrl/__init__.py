"""agentrl: multi-turn text environments and reinforcement learning for LLM agents.

``import agentrl`` is light: it registers the built-in environment ids with Gymnasium and nothing
more. Engines, torch and the store are imported when first used.
"""

from agentrl.checker import EnvCheckError, check_env
from agentrl.core import EpisodeOver, PromptSpec, TextEnv, TextSpace
from agentrl.registry import (
    MissingDependencyError,
    NotATextEnvError,
    UnknownEnvError,
    list_envs,
    make,
    register,
)

__version__ = "0.1.0"

__all__ = [
    "EnvCheckError",
    "EpisodeOver",
    "MissingDependencyError",
    "NotATextEnvError",
    "PromptSpec",
    "TextEnv",
    "TextSpace",
    "UnknownEnvError",
    "__version__",
    "check_env",
    "list_envs",
    "make",
    "register",
]
