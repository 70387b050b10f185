"""examples/trl_grpo_textworld.py: TRL's GRPOTrainer drives an agentrl env through ``environment_factory``.

The interface layer is played by hand first (an expert through the tool method wins, locally and over
``agentrl env-serve``); then the real trainer runs two GRPO steps on a CPU with a tiny model whose
tool-call format was taught by the example's supervised warm-up, and TRL's own metrics must show
that the model called the environment's tool and that no call failed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("textworld")
pytest.importorskip("torch")
trl = pytest.importorskip("trl")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "trl_grpo_textworld.py"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def load_example():
    spec = importlib.util.spec_from_file_location("trl_grpo_textworld", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("where", ["local", "served"])
def test_tool_env_plays_an_episode_to_the_win(where):
    example = load_example()
    spec = {"env": "textworld", "split": "valid", "max_turns": 10}
    server = None
    if where == "served":
        from agentrl.envserver.app import EnvServer

        server = EnvServer("textworld").start()
        spec["env"] = server.url
    example.ENV_SPEC.update(spec)
    try:
        dataset = example.build_dataset(example.ENV_SPEC, tasks=1, group_seeds=2)
        assert dataset["task"] == ["easy/100000", "easy/100000"] and dataset["seed"] == [0, 1]
        env = example.AgentrlToolEnv()
        text = env.reset(**dataset[0])
        assert text.startswith("\n\nGoal: ") and "Admissible commands:" in text
        while not env.done:
            answer = env.act(command=env.env.expert_action())
        assert env.get_reward() == 1.0 and "the episode is over" in answer and env.turns >= 1
        with pytest.raises(ValueError, match="episode is over"):
            env.act(command="look")
        env.env.close()
    finally:
        if server is not None:
            server.stop()


@pytest.mark.slow
def test_grpo_trainer_runs_two_steps_calling_the_env_tool(tmp_path):
    from agentrl.testing import tiny_model

    template = (Path(trl.__file__).parent / "chat_templates" / "qwen2_5.jinja").read_text()
    texts = ["You see a fridge.", '<tool_call>\n{"name": "act", "arguments": {"command": "open fridge"}}\n</tool_call>']
    model = tiny_model(tmp_path / "tiny-qwen25", texts=texts, chat_template=template)
    example = load_example()
    result = example.main(["--model", model, "--split", "train", "--tasks", "2", "--max-steps", "2",
                           "--max-completion-length", "64", "--warmup-steps", "100", "--output-dir", str(tmp_path / "out")])  # fmt: skip
    assert result["steps"] == 2
    losses = result["warmup_losses"]
    assert len(losses) == 100 and losses[-1] < losses[0] / 10  # the tool-call format was learnt
    logs = result["log_history"]
    assert len(logs) == 2
    assert all(entry["tools/call_frequency"] > 0 for entry in logs)  # TRL called AgentrlToolEnv.act
    assert all(entry["tools/failure_frequency"] == 0 for entry in logs)
    assert all(0.0 <= entry["rewards/AgentrlToolEnv/mean"] <= 1.0 for entry in logs)
