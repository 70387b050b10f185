"""The OpenAI-compatible client against real HTTP servers on 127.0.0.1 (``agentrl serve`` and helpers).

Failure servers are real sockets too: one that refuses connections (a closed port), one that accepts
and never answers (timeouts); misbehaving servers (429/503 with Retry-After, 4xx) are in
``test_openai_client_retries.py``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

torch = pytest.importorskip("torch")
httpx = pytest.importorskip("httpx")

from agentrl.policies import PolicyError, SamplingParams  # noqa: E402
from agentrl.policies.hf import HFPolicy  # noqa: E402
from agentrl.policies.openai import OpenAIPolicy  # noqa: E402
from agentrl.policies.server import PolicyServer  # noqa: E402

CLI = [sys.executable, "-c", "from agentrl.cli import main; main()"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def local_policy(tiny_chat_model):
    return HFPolicy(tiny_chat_model, device="cpu")


@pytest.fixture(scope="module")
def server(tiny_chat_model):
    with PolicyServer(HFPolicy(tiny_chat_model, device="cpu"), model_name="tiny", api_key="sekrit") as srv:
        yield srv


def prompts_of(tokenizer):
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("You see a fridge.", "Your task is to take the apple.")]


def test_served_completions_equal_local_generation(server, local_policy):
    """Prompt i of a call is sampled with seed + i: the local model with those per-row seeds gives the same tokens."""
    client = OpenAIPolicy(server.url, api_key="sekrit")
    assert client.model == "tiny"  # read from /v1/models
    prompts = prompts_of(local_policy.tokenizer)
    sampling = SamplingParams(max_new_tokens=12, temperature=1.0, seed=21, stop=("</action>",))
    remote = client.generate(prompts, sampling)
    local = local_policy.generate(prompts, sampling, seeds=[21, 22])
    for r, lc in zip(remote, local, strict=True):
        assert r.token_ids == lc.token_ids and r.finish_reason == lc.finish_reason
        assert r.logprobs == pytest.approx(lc.logprobs, abs=1e-6)
        content = lc.token_ids[:-1] if lc.token_ids[-1] in local_policy.eos_ids else lc.token_ids
        text = local_policy.tokenizer.decode(content, skip_special_tokens=True)
        assert r.text == (text[: text.index("</action>") + len("</action>")] if "</action>" in text else text)


def test_token_ids_are_read_from_logprob_tokens_when_the_server_has_no_token_ids_field(server, local_policy):
    """vLLM's return_tokens_as_token_ids shape: ids come from "token_id:N", never from re-tokenised text."""
    client = OpenAIPolicy(server.url, api_key="sekrit")
    prompt = prompts_of(local_policy.tokenizer)[0]
    body = {"model": "tiny", "prompt": [prompt], "max_tokens": 6, "seed": 3, "logprobs": 1, "return_tokens_as_token_ids": True}
    reply = httpx.post(server.url + "/completions", json=body, headers={"Authorization": "Bearer sekrit"}).json()
    choice = reply["choices"][0]
    expected = choice.pop("token_ids")
    completion = client._completion(choice, choice["text"])
    assert completion.token_ids == expected and len(completion.logprobs) == len(expected)


def test_chat_mode_returns_the_assistant_text(server, local_policy):
    client = OpenAIPolicy(server.url, api_key="sekrit", mode="chat")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Open the fridge."}]
    (completion,) = client.generate_messages([messages], SamplingParams(max_new_tokens=8, seed=4))
    text = local_policy.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt = local_policy.tokenizer(text, add_special_tokens=False)["input_ids"]
    (local,) = local_policy.generate([prompt], SamplingParams(max_new_tokens=8, seed=4))
    content = local.token_ids[:-1] if local.finish_reason == "stop" else local.token_ids
    assert completion.text == local_policy.tokenizer.decode(content, skip_special_tokens=True)
    assert completion.token_ids == local.token_ids


def test_chat_mode_puts_back_the_stop_string_the_server_cut(server, local_policy):
    """OpenAI-shaped servers cut the stop string; the agent's parser needs "</action>", and stop_reason says it was hit."""
    client = OpenAIPolicy(server.url, api_key="sekrit", mode="chat")
    messages = [{"role": "user", "content": "Open the fridge."}]
    (free,) = client.generate_messages([messages], SamplingParams(max_new_tokens=24, seed=5))
    stop = next(free.text[i : i + 2] for i in range(2, len(free.text) - 1) if "\ufffd" not in free.text[i : i + 2] and free.text[i : i + 2].strip())
    (cut,) = client.generate_messages([messages], SamplingParams(max_new_tokens=24, seed=5, stop=(stop,)))
    assert cut.text == free.text[: free.text.find(stop)] + stop and cut.finish_reason == "stop"


def test_wrong_api_key_is_one_clear_error_without_retries(server):
    start = time.perf_counter()
    with pytest.raises(PolicyError, match="authentication failed .*HTTP 401.*Incorrect API key"):
        OpenAIPolicy(server.url, api_key="wrong", backoff=5.0)
    assert time.perf_counter() - start < 4.0  # no backoff sleep happened


def test_unknown_model_and_bad_requests_are_clear_errors(server):
    client = OpenAIPolicy(server.url, model="gpt-17", api_key="sekrit")
    with pytest.raises(PolicyError, match="HTTP 404: The model `gpt-17` does not exist"):
        client.generate([[1, 2]], SamplingParams(max_new_tokens=2))
    good = OpenAIPolicy(server.url, api_key="sekrit")
    with pytest.raises(PolicyError, match="HTTP 400: prompt token ids must be in"):
        good.generate([[10**9]], SamplingParams(max_new_tokens=2))


def test_context_overflow_is_that_prompts_truncation_not_an_error(server, local_policy):
    """A 400 context_length_exceeded ends only that prompt: empty completion, finish "length", meta flag; no retry."""
    client = OpenAIPolicy(server.url, api_key="sekrit", backoff=5.0)
    short = prompts_of(local_policy.tokenizer)[0]
    start = time.perf_counter()
    ok, over = client.generate([short, [7] * 4095], SamplingParams(max_new_tokens=4, seed=1))
    assert time.perf_counter() - start < 4.0 and client.stats["retries"] == 0
    assert ok.token_ids and not ok.meta.get("context_overflow")
    assert over.token_ids == [] and over.finish_reason == "length" and over.meta["context_overflow"] is True
    assert "maximum context length is 4096" in over.meta["error"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_server_down_is_one_clear_error_after_retries():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(PolicyError, match=r"cannot connect .*gave up after 3 attempts"):
        OpenAIPolicy(url, model="m", max_retries=2, backoff=0.01).generate([[1]], SamplingParams())


def test_silent_server_times_out():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts connections (the kernel does) and never answers
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
        client = OpenAIPolicy(url, model="m", timeout=0.3, max_retries=1, backoff=0.01)
        with pytest.raises(PolicyError, match=r"timed out after 0.3 s .*2 attempts"):
            client.generate([[1]], SamplingParams())
    finally:
        listener.close()


@pytest.mark.slow
def test_agentrl_serve_and_eval_against_it(tiny_chat_model, tmp_path):
    """`agentrl serve MODEL` in a subprocess, then `agentrl eval --model URL --tokenizer DIR` (token-exact)."""
    pytest.importorskip("textworld")
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    server = subprocess.Popen(
        [*CLI, "serve", tiny_chat_model, "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as reply:
                    assert json.load(reply)["data"][0]["id"] == tiny_chat_model
                break
            except OSError:
                assert server.poll() is None, server.stdout.read().decode()
                assert time.time() < deadline, "agentrl serve did not come up"
                time.sleep(0.5)
        report = tmp_path / "report.json"
        result = subprocess.run(
            [*CLI, "eval", "textworld", "--model", f"http://127.0.0.1:{port}/v1",
             "--tokenizer", tiny_chat_model, "--episodes", "1", "--group-size", "2", "--max-turns", "2",
             "--max-new-tokens", "8", "--output", str(report), "--store", f"sqlite:///{tmp_path / 'runs.db'}"],
            capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        data = json.loads(report.read_text())
        assert data["summary"]["episodes"] == 2 and data["panel"] == ["easy/100000"]
        assert [ep["seed"] for ep in data["episodes"]] == [0, 1]
        assert data["model"]["tokens_generated"] > 0 and data["agentrl_version"]
        from agentrl.store import open_store

        with open_store(f"sqlite:///{tmp_path / 'runs.db'}") as store:
            (run,) = store.runs()
            stored = store.read_episodes(run.id)
        assert len(stored) == 2 and all(len(ep.turn_tokens()) == ep.turns for ep in stored)
        assert sum(ep.tokens_generated for ep in stored) == data["model"]["tokens_generated"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300)


def test_eval_model_errors_are_one_line(tmp_path):
    missing = run_cli("eval", "textworld", "--model", str(tmp_path / "nope"), "--episodes", "1")
    assert missing.returncode == 2
    assert "model '" in missing.stderr and "not found" in missing.stderr and "Traceback" not in missing.stderr
    down = run_cli("eval", "textworld", "--model", f"http://127.0.0.1:{free_port()}/v1", "--episodes", "1")
    assert down.returncode == 2 and "cannot connect" in down.stderr and "Traceback" not in down.stderr


def test_eval_admissible_only_plays_listed_actions_only(tiny_chat_model, tmp_path, server):
    """`agentrl eval --model DIR --admissible-only`: an untrained model makes no invalid move; a URL model cannot."""
    remote = run_cli("eval", "textworld", "--model", server.url, "--api-key", "sekrit", "--tokenizer", tiny_chat_model,
                     "--admissible-only", "--episodes", "1")  # fmt: skip
    assert remote.returncode == 2 and "no constrained decoding" in remote.stderr and "Traceback" not in remote.stderr
    report = tmp_path / "report.json"
    done = run_cli("eval", "textworld", "--model", tiny_chat_model, "--admissible-only", "--layout", "per_step",
                   "--episodes", "2", "--max-turns", "3", "--max-new-tokens", "32", "--output", str(report))  # fmt: skip
    assert done.returncode == 0, done.stderr
    data = json.loads(report.read_text())
    actions = [a for ep in data["episodes"] for a in ep["actions"]]
    assert len(actions) >= 2 and all(actions) and data["summary"]["invalid_action_rate"] == 0.0


def test_collector_with_a_chat_endpoint_records_text_only_steps(server):
    """No local tokenizer: the agent sends chat messages; steps keep text and no token ids to train on."""
    pytest.importorskip("textworld")
    import agentrl
    from agentrl.agents.llm import ACTION_STOP, LLMAgent, prompt_format_for
    from agentrl.rollout import Collector, ModelActor
    from agentrl.training.batch import NoUsableEpisodesError, build_batch

    client = OpenAIPolicy(server.url, api_key="sekrit", mode="chat")
    agent = LLMAgent(None, prompt_format_for("textworld"), history=1)
    assert agent.layout == "per_step"
    sampling = SamplingParams(max_new_tokens=6, stop=(ACTION_STOP,), seed=0)
    with Collector(lambda: agentrl.make("textworld", split="valid", max_turns=2), ModelActor(client, agent, sampling),
                   env_id="agentrl/TextWorld-v0", max_parallel=2) as collector:  # fmt: skip
        (episode,) = collector.run(["easy/100000"])
    assert episode.turns == 2 and episode.error is None
    assert episode.transcripts == []  # text in, text out: nothing to train on
    assert len(episode.meta["response_text"]) == 2
    with pytest.raises(NoUsableEpisodesError, match="no sampled tokens"):
        build_batch([episode])
