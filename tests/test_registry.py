"""Registry: Gymnasium ids, aliases, missing extras, third-party entry points, and the checker over
every registered id."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import gymnasium as gym
import pytest

import agentrl
from agentrl.registry import MissingDependencyError, UnknownEnvError
from agentrl.testing import install_plugin


def test_import_is_light():
    """`import agentrl` must not drag in torch, engines or the store (measured in benchmarks/import_time.py)."""
    code = "import sys, agentrl; print(sorted(m for m in ('torch','textworld','scienceworld','alfworld','sqlalchemy','transformers','typer') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.replace("'", '"')) == []


def test_builtin_ids_are_in_gymnasium_registry():
    ids = {e.id for e in agentrl.list_envs()}
    assert "agentrl/TextWorld-v0" in ids
    for env_id in ids:
        assert env_id in gym.registry and env_id.startswith("agentrl/")
    assert agentrl.registry.resolve("textworld").id == "agentrl/TextWorld-v0"
    assert agentrl.registry.resolve("TextWorld-v0").id == "agentrl/TextWorld-v0"


def test_unknown_id_is_a_clear_error():
    with pytest.raises(UnknownEnvError, match=r"unknown environment 'nope'; known aliases: .*textworld"):
        agentrl.make("nope")


def test_missing_dependency_names_the_extra():
    agentrl.register("agentrl/Missing-v0", "not_a_module:Env", requires=("not_a_module_xyz",), extra="missing")
    try:
        with pytest.raises(MissingDependencyError, match=r"pip install 'agentrl\[missing\]'"):
            agentrl.make("agentrl/Missing-v0")
    finally:
        agentrl.registry._ENTRIES.pop("agentrl/Missing-v0")
        del gym.registry["agentrl/Missing-v0"]


def test_register_rejects_malformed_ids():
    with pytest.raises(ValueError, match="namespace/Name-vN"):
        agentrl.register("NoNamespace", "x:y")


def test_gymnasium_make_returns_the_env_itself():
    env = gym.make("agentrl/TextWorld-v0", max_turns=7)
    try:
        assert isinstance(env, agentrl.TextEnv) and env.max_turns == 7
    finally:
        env.close()


PLUGIN = {
    "pyproject.toml": """
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "agentrl-echo-plugin"
        version = "0.0.1"
        [project.entry-points."agentrl.environments"]
        echo = "agentrl_echo:register"
    """,
    "agentrl_echo/__init__.py": """
        import agentrl

        class Echo(agentrl.TextEnv):
            def task_ids(self, split=None):
                return ["hello", "world"]
            def _reset_task(self, task_id):
                self.word = task_id
                return f"Say {task_id}.", {"instruction": f"say {task_id}"}
            def _step(self, action):
                won = action.strip() == self.word
                return ("yes" if won else "no"), float(won), won, {"won": won, "invalid_action": not action.strip()}

        def register():
            agentrl.register("echo/Echo-v0", "agentrl_echo:Echo", alias="echo", max_turns=3)
    """,
}


def test_third_party_entry_point_plugin(tmp_path):
    """A package built and installed in a temp dir registers through the `agentrl.environments` group."""
    env = install_plugin(PLUGIN, tmp_path)
    code = textwrap.dedent(
        """
        import agentrl, gymnasium
        ids = [e.id for e in agentrl.list_envs()]
        env = agentrl.make("echo")
        agentrl.check_env(env)
        env = gymnasium.make("echo/Echo-v0")
        obs, info = env.reset(options={"task": "world"})
        print(ids, obs, env.step("world")[1:4], env.max_turns)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert "'echo/Echo-v0'" in out and "Say world. (1.0, True, False) 3" in out
    cli = subprocess.run(["agentrl", "envs", "list"], env=env, capture_output=True, text=True, check=True).stdout
    assert "echo/Echo-v0" in cli


PLAIN_PLUGIN = {
    "pyproject.toml": """
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "agentrl-counter-plugin"
        version = "0.0.1"
        [project.entry-points."agentrl.environments"]
        counter = "agentrl_counter:register"
    """,
    "agentrl_counter/__init__.py": """
        import agentrl
        import gymnasium as gym
        from gymnasium import spaces

        class Counter(gym.Env):
            \"\"\"A plain gymnasium.Env: count to 3 by stepping 1.\"\"\"
            observation_space = spaces.Discrete(4)
            action_space = spaces.Discrete(2)

            def reset(self, *, seed=None, options=None):
                super().reset(seed=seed)
                self.count = 0
                return self.count, {}

            def step(self, action):
                self.count += int(action)
                return self.count, float(self.count == 3), self.count == 3, False, {}

        def register():
            agentrl.register("counter/Counter-v0", "agentrl_counter:Counter", alias="counter")
    """,
}


def _install(tmp_path, files) -> dict[str, str]:
    """The plug-in installed in a temp dir; wide COLUMNS so Rich output keeps one line per message."""
    return {**install_plugin(files, tmp_path), "COLUMNS": "1000"}


def test_a_plain_gymnasium_env_plugin_is_refused_with_one_line(tmp_path):
    """Issue 16: a plain gymnasium.Env plugin made fine, then `agentrl eval` died on a missing `splits`."""
    env = _install(tmp_path, PLAIN_PLUGIN)
    code = textwrap.dedent(
        """
        import agentrl, gymnasium
        from agentrl_counter import Counter
        try:
            agentrl.make("counter")
        except agentrl.NotATextEnvError as exc:
            print("make:", exc)
        try:
            agentrl.register("counter/Direct-v0", Counter)
        except agentrl.NotATextEnvError as exc:
            print("register:", "counter/Direct-v0" in str(exc), "counter/Direct-v0" in gymnasium.registry)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    lacks = ("agentrl_counter.Counter is not an agentrl.TextEnv, so it lacks splits, task_ids(), expert_action(), "
             "max_turns and the info keys of the text contract; subclass agentrl.TextEnv")  # fmt: skip
    assert f"make: counter/Counter-v0: {lacks}" in out
    assert "register: True False" in out  # refused before it reached Gymnasium's registry
    cli = shutil.which("agentrl", path=os.path.dirname(sys.executable)) or "agentrl"
    for command in (["eval", "counter"], ["play", "counter"], ["envs", "check", "counter"], ["envs", "info", "counter"]):
        proc = subprocess.run([cli, *command], env=env, capture_output=True, text=True, input="quit\n", timeout=300)
        assert proc.returncode == 2, (command, proc.stderr)
        assert proc.stderr.splitlines() == [f"error: counter/Counter-v0: {lacks} (README: Registering an environment)"]


@pytest.mark.slow
@pytest.mark.parametrize("env_id", [e.id for e in agentrl.list_envs()])
def test_checker_passes_on_every_registered_env(env_id):
    entry = agentrl.registry.resolve(env_id)
    if entry.missing():  # every extra is installed in CI; this only skips on partial dev installs
        pytest.skip(f"{env_id} needs agentrl[{entry.extra}]")
    agentrl.check_env(agentrl.make(env_id))
