"""Agents turn observations into actions. Scripted agents need no model."""

from agentrl.agents.scripted import (
    SCRIPTED_AGENTS,
    ExpertAgent,
    RandomAgent,
    ScriptedAgent,
    make_scripted_agent,
)

__all__ = ["SCRIPTED_AGENTS", "ExpertAgent", "RandomAgent", "ScriptedAgent", "make_scripted_agent"]
