"""Sandboxes: the result contract and containment, on both backends (bubblewrap and Docker).

Network tests only ever talk to a listener this test opens on the host's 127.0.0.1.
Docker tests run against a daemon that answers, else a private dockerd started for the session;
they are skipped (with the reason) when neither is possible.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentrl.sandboxes import Limits, Reason, get_sandbox
from agentrl.sandboxes.bubblewrap import BubblewrapSandbox

PY = sys.executable


def _bwrap_reason() -> str | None:
    works, why = BubblewrapSandbox.availability()
    return None if works else why


@pytest.fixture(scope="session")
def docker_url():
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


@pytest.fixture(params=["bubblewrap", pytest.param("docker", marks=pytest.mark.docker)])
def backend(request):
    """A function making a sandbox of the parametrised backend with given limits."""
    if request.param == "bubblewrap":
        reason = _bwrap_reason()
        if reason:
            pytest.skip(f"bubblewrap does not work here: {reason}")
        yield lambda **kw: get_sandbox("bubblewrap", Limits(**{"timeout_s": 20, **kw}))
        return
    url = request.getfixturevalue("docker_url")
    made = []

    def make(**kw):
        sandbox = get_sandbox("docker", Limits(**{"timeout_s": 20, **kw}), docker_url=url)
        made.append(sandbox)
        return sandbox

    yield make
    for sandbox in made:
        sandbox.close()


def _host_pids_matching(text: str) -> list[int]:
    """Host processes whose command line contains ``text`` (every pid namespace is visible from here)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    out.append(int(entry.name))
            except OSError:
                pass
    return out


def test_result_reports_exit_code_output_and_reason(backend):
    sandbox = backend()
    result = sandbox.run(["/bin/sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (result.exit_code, result.stdout, result.stderr, result.reason) == (
        3,
        "out\n",
        "err\n",
        Reason.FINISHED,
    )
    assert result.duration_s > 0 and not result.truncated
    ok = sandbox.run([PY, "-c", "import os; print(os.getuid(), os.getcwd())"])
    assert ok.ok and ok.stdout == "65534 /workspace\n"  # non-root, in the workspace


def test_no_network_only_own_loopback_and_host_listener_unreachable(backend):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    program = (
        "import socket\n"
        "print(socket.if_nameindex())\n"
        "s = socket.socket(); s.settimeout(3)\n"
        f"try:\n    s.connect(('127.0.0.1', {port})); print('connected')\n"
        "except OSError as e:\n    print('failed', type(e).__name__)\n"
    )
    try:
        result = backend().run([PY, "-c", program])
        with pytest.raises(socket.timeout):
            listener.accept()  # nothing arrived on the host side
    finally:
        listener.close()
    assert result.ok, result.stderr
    assert result.stdout.splitlines() == ["[(1, 'lo')]", "failed ConnectionRefusedError"]


def test_no_write_outside_workspace_and_workspace_is_shared(backend, tmp_path):
    outside = Path("/tmp") / f"agentrl-outside-{secrets.token_hex(4)}"
    outside.write_text("host file")
    try:
        script = (
            "for p in /usr/agentrl-x /etc/agentrl-x /agentrl-x /root/agentrl-x; do "
            "  touch $p 2>/dev/null && echo WROTE $p; done; "
            f"test -e {outside} && echo SEES_HOST_TMP; "
            "echo hello > /workspace/made-inside; echo private > /tmp/scratch; cat /tmp/scratch"
        )
        result = backend().run(["/bin/sh", "-c", script], workspace=tmp_path)
        assert result.ok, result.stderr
        assert result.stdout == "private\n"  # no WROTE, no SEES_HOST_TMP
        assert (tmp_path / "made-inside").read_text() == "hello\n"
        assert not Path("/tmp/scratch").exists() or Path("/tmp/scratch").read_text() != "private\n"
        assert outside.read_text() == "host file"
    finally:
        outside.unlink()
    for p in ("/usr/agentrl-x", "/etc/agentrl-x", "/agentrl-x", "/root/agentrl-x"):
        assert not os.path.exists(p)


def test_no_host_secrets(backend, monkeypatch):
    secret = secrets.token_hex(8)
    monkeypatch.setenv("AGENTRL_TEST_SECRET", secret)
    secret_file = Path("/root") / f"agentrl-secret-{secrets.token_hex(4)}"
    secret_file.write_text(secret)
    try:
        result = backend().run(["/bin/sh", "-c", f"env; cat {secret_file}; ls -a /root; cat /proc/1/environ"])
    finally:
        secret_file.unlink()
    assert secret not in result.stdout + result.stderr
    assert "AGENTRL_TEST_SECRET" not in result.stdout
    assert "No such file" in result.stderr


def test_fork_bomb_stops_at_process_limit(backend):
    program = (
        "import os, time\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n            time.sleep(60)\n"
        "            os._exit(0)\n        n += 1\nexcept OSError as e:\n    print(n, e.errno)\n"
    )
    sandbox = backend(pids=32, timeout_s=30)
    result = sandbox.run([PY, "-c", program])
    assert result.reason == Reason.FINISHED, result
    forked, errno = map(int, result.stdout.split())
    assert errno == 11  # EAGAIN: the pids limit
    assert 20 <= forked < 32  # the limit counts the sandbox's own processes too
    shell_bomb = sandbox.run(["/bin/sh", "-c", "bomb() { bomb | bomb & }; bomb"])
    assert shell_bomb.reason == Reason.FINISHED, (
        shell_bomb
    )  # it burns out at the limit, well before the timeout
    assert backend().run(["/bin/echo", "next"]).stdout == "next\n"  # the host is fine, the next sandbox works


def test_memory_hog_is_killed_at_memory_limit(backend):
    sandbox = backend(memory_mb=128)
    result = sandbox.run([PY, "-c", "x = bytearray(512 << 20); print('allocated', len(x))"])
    assert result.reason == Reason.OUT_OF_MEMORY, result
    assert result.exit_code == 137 and "allocated" not in result.stdout
    fits = sandbox.run([PY, "-c", "x = bytearray(32 << 20); print(len(x))"])
    assert fits.ok and fits.stdout == f"{32 << 20}\n"


def test_infinite_loop_killed_at_timeout_with_children_and_daemons(backend):
    tag = str(900000 + secrets.randbelow(99999))
    script = (
        f"sleep {tag}1 & setsid sleep {tag}2 & "
        f"nohup sh -c 'while :; do sleep {tag}3; done' >/dev/null 2>&1 & "
        "while :; do :; done"
    )
    start = time.monotonic()
    result = backend(timeout_s=2).run(["/bin/sh", "-c", script])
    elapsed = time.monotonic() - start
    assert result.reason == Reason.TIMEOUT and result.exit_code is None
    assert 2.0 <= result.duration_s < 8.0 and elapsed < 10.0
    deadline = time.monotonic() + 5
    while _host_pids_matching(tag) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _host_pids_matching(tag) == []  # the whole tree is gone, daemons included


def test_output_flood_is_cut_at_limit(backend):
    result = backend(output_bytes=100_000).run(["/usr/bin/yes", "flood"])
    assert result.reason == Reason.OUTPUT_LIMIT and result.truncated
    assert len(result.stdout) == 100_000 and result.stdout.startswith("flood\nflood\n")


def test_file_size_limit(backend):
    result = backend(disk_mb=1).run(
        ["/bin/sh", "-c", "head -c 3000000 /dev/zero > /workspace/big; echo rc=$?"]
    )
    assert "rc=0" not in result.stdout


def test_session_keeps_workspace_across_commands_and_survives_a_timeout(backend, tmp_path):
    sandbox = backend(timeout_s=10)
    with sandbox.open(tmp_path) as session:
        assert session.exec("echo 1 > counter").ok
        assert session.exec("sleep 30", timeout_s=1).reason == Reason.TIMEOUT
        again = session.exec("echo $(( $(cat counter) + 1 ))")
    assert again.ok and again.stdout == "2\n"


def test_unknown_backend_and_bad_limits_are_clear_errors():
    with pytest.raises(ValueError, match="unknown sandbox backend 'nope'"):
        get_sandbox("nope")
    with pytest.raises(ValueError, match="timeout_s must be > 0"):
        Limits(timeout_s=0)


@pytest.mark.docker
def test_auto_prefers_docker_when_a_daemon_answers(docker_url):
    from agentrl.sandboxes import check_backends

    sandbox = get_sandbox("auto", docker_url=docker_url)
    try:
        assert sandbox.name == "docker"
    finally:
        sandbox.close()
    report = check_backends(docker_url)
    assert report["docker"][0] is True and set(report) == {"docker", "bubblewrap"}
    dead = check_backends("unix:///nonexistent/docker.sock")
    assert dead["docker"][0] is False and "no Docker daemon answers" in dead["docker"][1]


def test_cli_sandbox_run_json_and_check():
    if _bwrap_reason():
        pytest.skip("bubblewrap does not work here")
    from typer.testing import CliRunner

    from agentrl.cli import app

    runner = CliRunner()
    out = runner.invoke(
        app, ["sandbox", "run", "--backend", "bubblewrap", "--json", "--", PY, "-c", "print(6 * 7)"]
    )
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["exit_code"] == 0 and data["stdout"] == "42\n" and data["reason"] == "finished"
    assert set(data) >= {"exit_code", "stdout", "stderr", "duration_s", "reason"}
    timed_out = runner.invoke(
        app, ["sandbox", "run", "--backend", "bubblewrap", "--timeout", "1", "--json", "--", "sleep", "10"]
    )
    assert json.loads(timed_out.stdout)["reason"] == "timeout" and timed_out.exit_code == 124
    check = runner.invoke(app, ["sandbox", "check", "--docker-url", "unix:///nonexistent/docker.sock"])
    assert check.exit_code == 0
    assert (
        "ok  bubblewrap" in check.stdout
        and "no  docker" in check.stdout
        and "auto -> bubblewrap" in check.stdout
    )
    # through the console script: a user mistake is one line and exit code 2
    bad = subprocess.run(
        ["agentrl", "sandbox", "run", "--backend", "nope", "--", "true"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "unknown sandbox backend 'nope'" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.docker
def test_mle_env_runs_programs_in_docker(docker_url):
    """The MLE env on the Docker backend: data read-only at /data, submission graded, workspace handed back."""
    pytest.importorskip("sklearn")
    import agentrl

    program = (
        "import numpy as np\n"
        "test = np.loadtxt('/data/test.csv', delimiter=',', skiprows=1)\n"
        "open('/data/overwrite', 'w')\n"
    )
    fixed = program.replace(
        "open('/data/overwrite', 'w')\n",
        "np.savetxt('submission.csv', np.c_[test[:, 0], np.zeros(len(test))], fmt='%d', delimiter=',',"
        " header='id,target', comments='')\n",
    )
    env = agentrl.make("mle", sandbox="docker", docker_url=docker_url, time_budget_s=60, memory_mb=512)
    try:
        env.reset(options={"task": "iris"})
        obs, reward, _, _, info = env.step(f"```python\n{program}```")
        assert info["run_reason"] == "finished" and info["exit_code"] == 1 and "Read-only file system" in obs
        assert info["milestones"] == ["imports", "data_loaded"] and reward == pytest.approx(-10 + 0.2)
        workspace = env._workspace
        obs, reward, _, _, info = env.step(f"```python\n{fixed}```")
        answers = Path(env._task.answers).read_text().split("\n")[1:]
        class0 = sum(1 for row in answers if row.endswith(",0")) / sum(1 for row in answers if row)
        assert info["submission_valid"] and info["raw_metric"] == pytest.approx(
            class0
        )  # all predicted class 0
        assert workspace.stat().st_uid == os.getuid()  # handed back after the run
        assert (workspace / "submission.csv").stat().st_uid == os.getuid()
    finally:
        env.close()
