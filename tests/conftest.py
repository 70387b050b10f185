"""Shared fixtures. Tests use real engines; caches go to one temporary directory per test session."""

from __future__ import annotations

import os
import shutil
import tempfile

# Triton's interpreter must be chosen before triton is imported (CPU-only machines).
if not shutil.which("nvidia-smi"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Generated games and other caches: one fresh directory per test session, never the user's cache.
os.environ.setdefault("AGENTRL_CACHE", tempfile.mkdtemp(prefix="agentrl-test-cache-"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
