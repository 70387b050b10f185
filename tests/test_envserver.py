"""`agentrl env-serve`: a real server on 127.0.0.1 serving TextWorld, played through RemoteEnv and raw HTTP.

The remote env must pass the same contract checker as a local one, replay the same episodes for the
same seeds, keep sessions apart, refuse what is over its limits, expire idle sessions, and survive
hostile clients (each attack gets a 4xx and the server still answers afterwards).
"""

from __future__ import annotations

import json
import socket
import time

import gymnasium as gym
import pytest

pytest.importorskip("textworld")
pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

import agentrl  # noqa: E402
from agentrl.agents.scripted import RandomAgent  # noqa: E402
from agentrl.envserver.app import EnvServer  # noqa: E402
from agentrl.envserver.client import RemoteEnv, RemoteEnvError  # noqa: E402
from agentrl.evaluation import evaluate  # noqa: E402


@pytest.fixture(scope="module")
def server():
    with EnvServer("textworld", {"max_turns": 8}, max_sessions=6, idle_timeout_s=30.0, max_body_bytes=256 * 1024) as srv:
        yield srv


def test_contract_checker_passes_on_the_remote_env(server):
    env = agentrl.make(server.url, split="valid")
    assert isinstance(env, RemoteEnv) and env.max_turns == 8 and env.split == "valid"
    agentrl.check_env(env)  # Gymnasium's checker, seeds, garbage actions (100 kB too), max_turns, EpisodeOver, double close


def test_gymnasium_make_with_a_url(server):
    env = gym.make("agentrl/Remote-v0", url=server.url, max_turns=3).unwrapped
    try:
        assert env.task_ids("valid")[:2] == agentrl.make("textworld").task_ids("valid")[:2]
        obs, info = env.reset(seed=0, options={"task": "easy/100000"})
        assert info["task_id"] == "easy/100000" and info["turn"] == 0 and "instruction" in info
    finally:
        env.close()


def test_scripted_run_gives_the_same_episodes_as_in_process(server):
    local_env = agentrl.make("textworld", split="valid", max_turns=8)
    remote_env = agentrl.make(server.url, split="valid")
    try:
        runs = [evaluate(env, RandomAgent(), env_id="agentrl/TextWorld-v0", split="valid", episodes=2, group_size=2, seed=3)
                for env in (local_env, remote_env)]  # fmt: skip
    finally:
        local_env.close()
        remote_env.close()
    local, remote = (run.episodes for run in runs)
    assert len(local) == 4 and sum(ep.turns for ep in local) >= 8
    for a, b in zip(local, remote, strict=True):
        assert (a.task_id, a.seed, a.won, a.progress, a.error, a.first_observation) == (b.task_id, b.seed, b.won, b.progress, b.error, b.first_observation)
        assert [(s.observation, s.action, s.reward, s.terminated, s.truncated, s.info) for s in a.steps] == \
               [(s.observation, s.action, s.reward, s.terminated, s.truncated, s.info) for s in b.steps]  # fmt: skip


def test_sessions_are_isolated(server):
    one, two = RemoteEnv(server.url), RemoteEnv(server.url)
    try:
        assert one.session_id != two.session_id
        obs_one, _ = one.reset(seed=0, options={"task": "easy/100000"})
        obs_two, _ = two.reset(seed=0, options={"task": "easy/100001"})
        one.step("inventory")
        one.step("look")
        _, _, _, _, info_two = two.step("look")
        assert info_two["turn"] == 1 and info_two["task_id"] == "easy/100001"  # two's turn count is its own
        one.close()  # closing one leaves the other playing
        _, _, _, _, info_two = two.step("inventory")
        assert info_two["turn"] == 2
    finally:
        two.close()


def test_too_many_sessions_is_a_clear_error_and_frees_on_close(server):
    held = []
    try:
        while len(held) < 20:
            held.append(RemoteEnv(server.url))
    except RemoteEnvError as exc:
        assert "HTTP 429 capacity_reached" in str(exc) and "maximum of 6 sessions" in str(exc)
    assert len(held) == 6 and server.service.active_sessions == 6
    held.pop().close()
    held.append(RemoteEnv(server.url))  # a slot came back
    for env in held:
        env.close()
    assert server.service.active_sessions == 0


def test_idle_sessions_expire():
    with EnvServer("textworld", idle_timeout_s=0.3) as srv:
        env = RemoteEnv(srv.url)
        env.reset(seed=0, options={"task": "easy/100000"})
        time.sleep(1.2)
        assert srv.service.active_sessions == 0
        with pytest.raises(RemoteEnvError, match="404 session_expired: session .* expired after 0.3 s idle"):
            env.step("look")
        env.close()


def test_episode_over_and_unknown_task_map_to_the_local_errors(server):
    env = RemoteEnv(server.url, max_turns=1)
    try:
        with pytest.raises(agentrl.EpisodeOver):
            env.step("look")  # never reset
        with pytest.raises(ValueError, match="unknown TextWorld task 'nope'"):
            env.reset(options={"task": "nope"})
        env.reset(seed=0, options={"task": "easy/100000"})
        assert env.step("look")[3] is True  # truncated after max_turns=1
        with pytest.raises(agentrl.EpisodeOver):
            env.step("look")
    finally:
        env.close()


def raw(server, method: str, path: str, **kwargs) -> httpx.Response:
    return httpx.request(method, server.url + path, timeout=30, **kwargs)


def test_hostile_clients_get_4xx_and_the_server_lives_on(server):
    sid = raw(server, "POST", "/sessions").json()["session_id"]
    try:
        huge = raw(server, "POST", f"/sessions/{sid}/step", content=json.dumps({"action": {"text": "x" * 2_000_000}}),
                   headers={"Content-Type": "application/json"})  # fmt: skip
        assert huge.status_code == 413 and huge.json()["error"]["code"] == "body_too_large"

        def chunks():  # no Content-Length: the limit must hold for a streamed body too
            for _ in range(100):
                yield b"x" * 10_000

        streamed = raw(server, "POST", f"/sessions/{sid}/step", content=chunks())
        assert streamed.status_code == 413
        garbage = raw(server, "POST", f"/sessions/{sid}/step", content=b"{\"action\": [", headers={"Content-Type": "application/json"})
        assert garbage.status_code == 400 and garbage.json()["error"]["code"] == "invalid_json"
        wrong = raw(server, "POST", f"/sessions/{sid}/step", json={"action": {"text": 5, "extra": 1}})
        assert wrong.status_code == 422 and wrong.json()["error"]["code"] == "invalid_request"
        assert raw(server, "POST", f"/sessions/{sid}/step", json={"action": "look"}).status_code == 422
        unknown = raw(server, "POST", "/sessions/not-a-session/step", json={"action": {"text": "look"}})
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_session"
        for body in ({"split": "secret"}, {"data_dir": "/etc"}, {"max_turns": -1}):
            assert raw(server, "POST", "/sessions", json=body).status_code in (400, 422)  # no server-side kwargs from clients
        assert raw(server, "POST", f"/sessions/{sid}/reset", json={"seed": -5}).status_code == 422
        assert raw(server, "POST", f"/sessions/{sid}/reset", json={"task": "../../etc/passwd"}).status_code == 400
        assert raw(server, "GET", "/tasks", params={"split": "nope"}).status_code == 400
        assert raw(server, "DELETE", "/sessions/nope").status_code == 404
        with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1]))) as sock:  # not HTTP at all
            sock.sendall(b"\x00\xff garbage \r\n\r\n")
            sock.recv(1024)
        # still serving, and the session survived every attack
        assert raw(server, "GET", "/health").json() == {"status": "healthy"}
        reset = raw(server, "POST", f"/sessions/{sid}/reset", json={"seed": 0, "task": "easy/100000"})
        assert reset.status_code == 200 and reset.json()["done"] is False
        step = raw(server, "POST", f"/sessions/{sid}/step", json={"action": {"text": "\x00\x1b[31m ß→中"}})
        assert step.status_code == 200 and step.json()["observation"]["info"]["turn"] == 1
        state = raw(server, "GET", f"/sessions/{sid}/state").json()
        assert state["step_count"] == 1 and state["task_id"] == "easy/100000"
    finally:
        raw(server, "DELETE", f"/sessions/{sid}")


def test_collector_over_a_remote_env_equals_in_process(server, tiny_chat_model):
    """The LLM collector (tiny model, fixed seeds) records the same steps whether the env is local or served."""
    pytest.importorskip("torch")
    from agentrl.agents.llm import ACTION_STOP, LLMAgent, prompt_format_for
    from agentrl.policies import SamplingParams
    from agentrl.policies.hf import HFPolicy
    from agentrl.rollout import Collector, ModelActor

    policy = HFPolicy(tiny_chat_model, device="cpu")
    sampling = SamplingParams(max_new_tokens=12, seed=0, stop=(ACTION_STOP,))
    runs = []
    for make in (lambda: agentrl.make("textworld", split="valid", max_turns=3), lambda: agentrl.make(server.url, split="valid", max_turns=3)):
        agent = LLMAgent(policy.tokenizer, prompt_format_for("textworld"))
        with Collector(make, ModelActor(policy, agent, sampling), env_id="agentrl/TextWorld-v0", max_parallel=2) as collector:
            runs.append(sorted(collector.run(["easy/100000"], group_size=2), key=lambda ep: ep.seed))
    for a, b in zip(*runs, strict=True):
        assert [(s.observation, s.action, s.reward) for s in a.steps] == [(s.observation, s.action, s.reward) for s in b.steps]
        assert a.transcripts == b.transcripts  # the same ids seen and sampled, token for token
        assert a.turns == 3 or a.won


def test_env_serve_command_serves_and_bad_input_is_one_line(tmp_path):
    """`agentrl env-serve textworld` in a subprocess: a RemoteEnv plays it; an unknown env is one clear line."""
    import os
    import subprocess
    import sys

    cli = [sys.executable, "-c", "from agentrl.cli import main; main()"]
    bad = subprocess.run([*cli, "env-serve", "nope"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown environment 'nope'" in bad.stderr and "Traceback" not in bad.stderr
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([*cli, "env-serve", "textworld", "--port", str(port), "-e", "max_turns=4"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(os.environ))  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.time() < deadline, "agentrl env-serve did not come up"
            time.sleep(0.3)
        env = agentrl.make(url)
        assert env.max_turns == 4 and env.remote_id == "agentrl/TextWorld-v0"
        env.reset(seed=0, options={"task": env.task_ids()[0]})
        assert env.step("look")[4]["turn"] == 1
        env.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_openenv_websocket_sessions(server):
    """/ws speaks OpenEnv's session protocol (what its GenericEnvClient sends; checked once by hand with
    openenv-core 0.3.0's client too): reset/step/state/close messages, errors that keep the session."""
    websockets_sync = pytest.importorskip("websockets.sync.client")
    url = server.url.replace("http://", "ws://") + "/ws"

    def ask(ws, message):
        ws.send(json.dumps(message) if not isinstance(message, str) else message)
        return json.loads(ws.recv(timeout=60))

    with websockets_sync.connect(url) as ws:
        reply = ask(ws, {"type": "reset", "data": {"seed": 0, "task": "easy/100000", "episode_id": "ep-1", "ignored": 1}})
        assert reply["type"] == "observation" and reply["data"]["done"] is False
        local = agentrl.make("textworld", max_turns=8)
        assert reply["data"]["observation"]["text"] == local.reset(seed=0, options={"task": "easy/100000"})[0]
        step = ask(ws, {"type": "step", "data": {"text": "look"}})
        assert step["data"]["observation"]["text"] == local.step("look")[0] and step["data"]["reward"] == 0.0
        local.close()
        assert ask(ws, {"type": "state"})["data"] | {"episode_id": "ep-1", "step_count": 1} == ask(ws, {"type": "state"})["data"]
        assert ask(ws, "{nope")["data"]["code"] == "INVALID_JSON"
        assert ask(ws, {"type": "dance"})["data"]["code"] == "UNKNOWN_TYPE"
        assert ask(ws, {"type": "step", "data": {"action": "look"}})["data"]["code"] == "VALIDATION_ERROR"
        assert ask(ws, {"type": "step", "data": {"text": "inventory"}})["data"]["observation"]["info"]["turn"] == 2
        ws.send(json.dumps({"type": "close"}))
    deadline = time.time() + 10
    while server.service.active_sessions and time.time() < deadline:
        time.sleep(0.05)
    assert server.service.active_sessions == 0
    held = [RemoteEnv(server.url) for _ in range(6)]
    try:
        with websockets_sync.connect(url) as ws:
            refused = json.loads(ws.recv(timeout=30))
        assert refused["type"] == "error" and refused["data"]["code"] == "CAPACITY_REACHED"
    finally:
        for env in held:
            env.close()
