"""Rollout: run many episodes at once with a policy and record exact token ids."""
