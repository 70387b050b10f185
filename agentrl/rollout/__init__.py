"""Rollout: run many episodes at once with a policy and record exact token ids."""

from agentrl.rollout.collector import Collector
from agentrl.rollout.layouts import LayoutError, TrainingRow, concat_sequence, per_step_rows, training_rows

__all__ = ["Collector", "LayoutError", "TrainingRow", "concat_sequence", "per_step_rows", "training_rows"]
