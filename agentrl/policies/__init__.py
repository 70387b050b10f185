"""Policies: inference backends behind one ``generate(prompts, sampling)`` interface."""
