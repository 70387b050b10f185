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


# --- PostgreSQL for the store tests (agentrl.store) --------------------------------------------
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def postgres_url():
    """An admin URL of a PostgreSQL server: $AGENTRL_TEST_POSTGRES_URL, else a private one on 127.0.0.1."""
    if os.environ.get("AGENTRL_TEST_POSTGRES_URL"):
        yield os.environ["AGENTRL_TEST_POSTGRES_URL"]
        return
    from agentrl.store.testing import PostgresUnavailable, postgres_server

    try:
        server = postgres_server()
        url = server.__enter__()
    except PostgresUnavailable as exc:
        pytest.skip(f"no PostgreSQL server for the store tests: {exc}")
    try:
        yield url
    finally:
        server.__exit__(None, None, None)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """A URL of a fresh, empty store database, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    from agentrl.store.testing import create_database, drop_database

    admin = request.getfixturevalue("postgres_url")
    url = create_database(admin)
    yield url
    drop_database(admin, url)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module: on two shared cores it avoids oversubscription stalls
    (results do not depend on it). Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- A Docker daemon (a private dockerd when none answers) for Docker-backed tests -----------------
@pytest.fixture(scope="session")
def docker_url():
    """The address of a Docker daemon; skips (allowed in CI) when none can be had."""
    from agentrl.sandboxes.testing import DockerUnavailable, docker_daemon

    try:
        ctx = docker_daemon()
        url = ctx.__enter__()
    except DockerUnavailable as exc:
        pytest.skip(f"no Docker daemon: {exc}")
    try:
        yield url
    finally:
        ctx.__exit__(None, None, None)


# --- Tiny local chat model (agentrl.testing) for policy, agent and rollout tests ------------------
TINY_MODEL_TEXTS = [
    "-= Kitchen =- You've entered a kitchen. You see a closed fridge and a table. There is an exit to the north.",
    "Your task is to take the apple from the fridge and put it on the table in the living room.",
    "Admissible actions: close fridge, drop apple, examine table, go north, inventory, look, open fridge, take apple",
    "You open the fridge. You take the apple. You put the apple on the table. Your score has just gone up by one point.",
]


@pytest.fixture(scope="session")
def tiny_chat_model(tmp_path_factory) -> str:
    """Path of a tiny Qwen2 model + locally trained BPE tokenizer with a ChatML template."""
    from agentrl.testing import tiny_model

    return tiny_model(tmp_path_factory.mktemp("tiny-chatml"), texts=TINY_MODEL_TEXTS)


@pytest.fixture(scope="session")
def tiny_reasoning_model(tmp_path_factory) -> str:
    """Same, with a Qwen3-like template that drops <think> blocks of earlier assistant turns."""
    from agentrl.testing import tiny_model

    return tiny_model(tmp_path_factory.mktemp("tiny-reasoning"), texts=TINY_MODEL_TEXTS, chat_template="reasoning")


@pytest.fixture(scope="session")
def tiny_hub_model(tmp_path_factory, tiny_chat_model) -> dict[str, str]:
    """The tiny chat model as Hub id ``agentrl-test/tiny-chat`` in a private Hugging Face cache.

    Returns ``{"cache": HF_HUB_CACHE, "repo_id": ..., "commit": ..., "path": the local original}``.
    Use it with ``HF_HUB_OFFLINE=1`` (set for the whole session above): nothing is downloaded.
    """
    from agentrl.testing import hub_cache

    cache = tmp_path_factory.mktemp("hf-hub-cache")
    snapshot = hub_cache(tiny_chat_model, cache, "agentrl-test/tiny-chat")
    return {"cache": str(cache), "repo_id": "agentrl-test/tiny-chat", "commit": snapshot.name, "path": tiny_chat_model}


# In CI every real component is installed by scripts/install.sh, so a skip there for anything but missing
# hardware (a GPU), the GPU-only vLLM extra, or a Docker daemon that cannot start is a broken install step,
# not a reason to pass quietly: it fails the run.
_CI_SKIP_ALLOWED = ("cuda", "gpu", "vllm", "docker")


def _fail_unexpected_ci_skip(report) -> None:
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        reason = str(report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr)
        if not any(word in reason.lower() for word in _CI_SKIP_ALLOWED):
            report.outcome = "failed"
            report.longrepr = f"skipped in CI, where every real component must run: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_unexpected_ci_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_unexpected_ci_skip(outcome.get_result())
