"""Rollout: play episodes with an actor (a model or a script) and record every turn's exact tokens."""

from agentrl.rollout.actors import Actor, Decision, Live, ModelActor, ScriptedActor
from agentrl.rollout.collector import Collector

__all__ = ["Actor", "Collector", "Decision", "Live", "ModelActor", "ScriptedActor"]
