"""Sandboxes: the result contract and containment, on both backends (bubblewrap and Docker).

Network tests only ever talk to a listener this test opens on the host's 127.0.0.1.
Docker tests run against a daemon that answers, else a private dockerd started for the session;
they are skipped (with the reason) when neither is possible.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agentrl.sandboxes import Limits, Reason, get_sandbox
from agentrl.sandboxes.base import SANDBOX_UID
from agentrl.sandboxes.bubblewrap import BubblewrapSandbox

PY = sys.executable
AGENTRL = str(Path(PY).with_name("agentrl")) if Path(PY).with_name("agentrl").exists() else "agentrl"


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
    assert ok.ok and ok.stdout == f"{SANDBOX_UID} /workspace\n"  # non-root, in the workspace
    assert SANDBOX_UID != 0


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


# --- Attacks on the host (issue 16): each was an escape or a leak before the fix ----------------------

#: Kernel settings a program running with host root's powers could change. Opened for writing and closed
#: at once: nothing is ever written.
KERNEL_FILES = (
    "/proc/sys/kernel/core_pattern",
    "/proc/sys/vm/drop_caches",
    "/proc/sys/kernel/panic",
    "/proc/sys/fs/file-max",
    "/proc/sysrq-trigger",
    "/sys/kernel/mm/transparent_hugepage/enabled",
    "/sys/power/state",
)


def _status_fields(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def test_kernel_settings_cannot_be_opened_for_writing(backend):
    probe = (
        "import os\n"
        f"for p in {KERNEL_FILES!r}:\n"
        "    try:\n"
        "        fd = os.open(p, os.O_WRONLY)\n"
        "    except OSError as e:\n"
        "        print('refused', p, e.errno)\n"
        "    else:\n"
        "        os.close(fd)\n"  # closed without writing a byte
        "        print('OPENED', p)\n"
    )
    result = backend().run([PY, "-c", probe])
    assert result.ok, result.stderr
    assert "OPENED" not in result.stdout, result.stdout
    refused = {path: int(code) for _, path, code in (line.split() for line in result.stdout.splitlines())}
    assert set(refused) == set(KERNEL_FILES)
    for path in KERNEL_FILES[:4]:  # present in every sandbox: refused for want of permission, not missing
        assert refused[path] in (errno.EACCES, errno.EROFS, errno.EPERM), (path, refused[path])


def test_program_runs_as_an_unprivileged_host_user_without_capabilities(backend):
    """Seen from the host (not from inside, where a user namespace could lie): uid, gid and capabilities."""
    tag = f"agentrl-uid-probe-{secrets.token_hex(4)}"
    sandbox = backend(timeout_s=60)
    results = []
    runner = threading.Thread(
        target=lambda: results.append(sandbox.run(["/bin/sh", "-c", "sleep 30", tag])), daemon=True
    )
    runner.start()
    deadline = time.monotonic() + 30
    pids: list[int] = []
    while not pids and time.monotonic() < deadline:
        pids = [p for p in _host_pids_matching(tag) if Path(f"/proc/{p}/exe").exists()]
        pids = [p for p in pids if "sh" in os.readlink(f"/proc/{p}/exe")]
        time.sleep(0.1)
    assert pids, "the sandboxed shell never appeared on the host"
    status = _status_fields(pids[0])
    os.kill(pids[0], signal.SIGKILL)  # seen: no need to wait for the deadline
    runner.join(timeout=30)
    assert status["Uid"].split() == [str(SANDBOX_UID)] * 4
    assert "0" not in status["Gid"].split() and status["Groups"] in ("", str(SANDBOX_UID))
    for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[caps], 16) == 0, (caps, status[caps])
    assert status["NoNewPrivs"] == "1"
    assert results and results[0].reason == Reason.FINISHED and results[0].exit_code != 0


def test_no_new_user_namespaces_inside(backend):
    result = backend().run(["/bin/sh", "-c", "unshare -U -r true && echo MADE_USERNS; echo rc=$?"])
    assert "MADE_USERNS" not in result.stdout and "rc=" in result.stdout, result


INIT_AND_KEYRING_PROBE = """
import ctypes, os, platform
libc = ctypes.CDLL(None, use_errno=True)
try:
    os.kill(1, 0)
    print('signal-init', 0)
except OSError as e:
    print('signal-init', e.errno)
print('ptrace-init', 0 if libc.ptrace(16, 1, 0, 0) == 0 else ctypes.get_errno())  # PTRACE_ATTACH
add_key = {'x86_64': 248, 'aarch64': 217}[platform.machine()]
print('add-key', 0 if libc.syscall(add_key, b'user', b'k', b'v', 1, -4) >= 0 else ctypes.get_errno())
"""


def test_init_and_keyring_are_out_of_reach(backend):
    """The sandbox's first process cannot be signalled or traced (in Docker it keeps the container tied
    to its supervisor), and the kernel keyring, shared by every sandbox of the same user, is refused."""
    result = backend().run([PY, "-c", INIT_AND_KEYRING_PROBE])
    assert result.ok, result
    codes = dict(line.split() for line in result.stdout.splitlines())
    assert codes == {
        "signal-init": str(errno.EPERM),
        "ptrace-init": str(errno.EPERM),
        "add-key": str(errno.EPERM),
    }


def test_multiprocessing_works_and_dev_shm_shares_the_quota(backend, tmp_path):
    program = (
        "import multiprocessing as mp\n"
        "with mp.Pool(2) as pool:\n"
        "    print(sum(pool.map(abs, range(-5, 5))), mp.Lock().acquire())\n"
    )
    sandbox = backend(disk_mb=16)
    pooled = sandbox.run([PY, "-c", program], workspace=tmp_path)
    assert pooled.ok and pooled.stdout == "25 True\n", pooled
    shm = sandbox.run(["/bin/sh", "-c", "head -c 20000000 /dev/zero > /dev/shm/x"], workspace=tmp_path)
    assert shm.reason == Reason.DISK_LIMIT, shm


SUID_PLANT = (
    "cp /usr/bin/python3 suidpy && chmod 4755 suidpy && cp /usr/bin/python3 sgidpy && chmod 2755 sgidpy"
    " && mkdir sgdir && chmod 2777 sgdir && echo data > made && mkdir -p deep/er && cp suidpy deep/er/"
    " && chmod 6755 deep/er/suidpy && ls -ln >&2"
)
PLANTED = ("suidpy", "sgidpy", "sgdir", "made", "deep/er/suidpy")


def test_setuid_and_setgid_files_never_survive_and_ownership_is_restored(backend, tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    os.chown(ws, 4242, 4343)  # an unprivileged owner, so a wrong owner after the run shows
    with backend().open(ws) as session:
        result = session.exec(SUID_PLANT)
        assert result.ok, result
        for name in PLANTED:  # while the session is open: the program's files, owned by the sandbox user
            st = os.lstat(ws / name)
            assert st.st_uid == SANDBOX_UID != 0, (name, st.st_uid)
            assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID), (name, oct(st.st_mode))
    assert (os.stat(ws).st_uid, os.stat(ws).st_gid) == (4242, 4343)
    for name in PLANTED:  # after the run: handed to the workspace's owner, bits still cleared
        st = os.lstat(ws / name)
        assert (st.st_uid, st.st_gid) == (4242, 4343), name
        assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID), (name, oct(st.st_mode))
    assert (ws / "made").read_text() == "data\n"
    # The planted interpreter, run by an unprivileged host user, stays that user.
    whoami = subprocess.run(
        ["setpriv", "--reuid=4242", "--regid=4343", "--clear-groups", str(ws / "suidpy"), "-c",
         "import os; print(os.geteuid(), os.getegid())"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert whoami.stdout == "4242 4343\n", whoami


def test_disk_quota_ends_the_run_with_disk_limit(backend, tmp_path):
    sandbox = backend(disk_mb=64, inodes=500)
    big = sandbox.run(
        ["/bin/sh", "-c", "for i in 1 2 3 4; do head -c 30000000 /dev/zero > f$i; done; echo done"],
        workspace=tmp_path,
    )
    assert big.reason == Reason.DISK_LIMIT, big
    sizes = [(tmp_path / f"f{i}").stat().st_size for i in (1, 2, 3, 4)]
    assert sizes[:2] == [30_000_000, 30_000_000] and sum(sizes) <= 64 << 20  # filled the quota, no more
    assert "No space left on device" in big.stderr


def test_inode_quota_ends_the_run_with_disk_limit(backend, tmp_path):
    program = "import os\nfor i in range(100_000):\n    open(f'small{i}', 'w').close()\n"
    result = backend(inodes=500).run([PY, "-c", program], workspace=tmp_path)
    assert result.reason == Reason.DISK_LIMIT, result
    made = len(list(tmp_path.iterdir()))
    assert 450 <= made <= 500


def test_tmp_shares_the_workspace_quota_and_runs_under_it_finish(backend, tmp_path):
    quota = 64 << 20
    sandbox = backend(disk_mb=64)
    script = "head -c 40000000 /dev/zero > /tmp/a; head -c 40000000 /dev/zero > b"
    both = sandbox.run(["/bin/sh", "-c", script], workspace=tmp_path)
    assert both.reason == Reason.DISK_LIMIT, both
    b = (tmp_path / "b").stat().st_size
    assert quota - 40_000_000 - (64 << 10) < b <= quota - 40_000_000  # what /tmp/a left of the quota
    # The next run gets an empty /tmp; b is still in the workspace, so 40 MB fit and no more.
    again = sandbox.run(["/bin/sh", "-c", "head -c 50000000 /dev/zero > c"], workspace=tmp_path)
    assert again.reason == Reason.DISK_LIMIT, again
    assert quota - b - (64 << 10) < (tmp_path / "c").stat().st_size <= quota - b
    (tmp_path / "b").unlink()
    (tmp_path / "c").unlink()
    ok = sandbox.run(["/bin/sh", "-c", "head -c 10000000 /dev/zero > c"], workspace=tmp_path)
    assert ok.ok, ok
    assert (tmp_path / "c").stat().st_size == 10_000_000


def test_sparse_files_and_hard_links_are_not_amplified_on_the_host(backend, tmp_path):
    """What the program wrote comes back no bigger on the host disk than it was in the quota."""
    script = (
        "for i in $(seq 1 40); do truncate -s 60M sparse$i; done; "
        "head -c 20000000 /dev/urandom > h; for i in $(seq 1 100); do ln h h$i; done"
    )
    result = backend(disk_mb=64, inodes=500).run(["/bin/sh", "-c", script], workspace=tmp_path)
    assert result.ok, result
    files = [p for p in tmp_path.iterdir()]
    assert len(files) == 141
    allocated = {(st.st_ino, st.st_blocks * 512) for st in (p.lstat() for p in files)}
    assert sum(size for _, size in allocated) < 24 << 20  # one 20 MB file, the sparse ones allocate nothing
    assert (tmp_path / "sparse7").stat().st_size == 60 << 20 and (tmp_path / "h").stat().st_nlink == 101


HOSTILE_TREE = """
import os
os.symlink('/etc/passwd', 'passwd-link')
os.symlink('/', 'root-link')
os.mkfifo('fifo')
os.makedirs('/'.join(['deep'] * 200))
with open('locked', 'w') as f:
    f.write('x')
os.chmod('locked', 0)
os.chmod('.', 0o7777)
os.chdir('/tmp')
for _ in range(3000):  # deeper than PATH_MAX and than Python's recursion limit
    os.mkdir('d')
    os.chdir('d')
"""


def test_hostile_workspace_entries_come_back_inert(backend, tmp_path):
    from agentrl.sandboxes.hostfs import MAX_DEPTH

    ws = tmp_path / "ws"
    ws.mkdir(mode=0o750)
    with backend(timeout_s=30).open(ws) as session:
        made = session.exec([PY, "-c", HOSTILE_TREE])
        assert made.ok, made
        assert session.exec("ls -A /tmp").stdout == ""  # the next command gets an empty /tmp
    assert os.readlink(ws / "passwd-link") == "/etc/passwd" and os.readlink(ws / "root-link") == "/"
    assert not os.path.lexists(ws / "fifo")  # special files are dropped, never opened
    depth, node = 0, ws / "deep"
    while node.is_dir() and not node.is_symlink():
        depth, node = depth + 1, node / "deep"
    assert depth == MAX_DEPTH  # deeper directories are not copied back
    assert stat.S_IMODE((ws / "locked").stat().st_mode) == 0 and (ws / "locked").read_text() == "x"
    assert stat.S_IMODE(ws.stat().st_mode) == 0o750 and not os.path.ismount(ws)


def test_workspace_bigger_than_its_quota_runs_nothing_and_is_left_as_it_was(backend, tmp_path):
    (tmp_path / "big").write_bytes(b"b" * (3 << 20))
    result = backend(disk_mb=2).run(["/bin/sh", "-c", "echo ran > ran"], workspace=tmp_path)
    assert result.reason == Reason.DISK_LIMIT and result.exit_code is None, result
    assert "does not fit in its quota" in result.stderr
    assert os.listdir(tmp_path) == ["big"] and (tmp_path / "big").stat().st_size == 3 << 20
    assert not os.path.ismount(tmp_path)


def test_workspace_comes_back_with_every_change_and_unchanged_files_untouched(backend, tmp_path):
    for name, text in (("same", "kept"), ("edited", "old!"), ("gone", "x"), ("moved", "m")):
        (tmp_path / name).write_text(text)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "inner").write_text("i")
    same_inode = (tmp_path / "same").stat().st_ino
    program = (
        "import os\n"
        "st = os.stat('edited')\n"
        "open('edited', 'w').write('new!')\n"
        "os.utime('edited', ns=(st.st_atime_ns, st.st_mtime_ns))\n"  # same size and mtime: only ctime tells
        "os.remove('gone')\n"
        "os.rename('moved', 'sub/moved')\n"
        "open('sub/inner', 'a').write('2')\n"
    )
    result = backend().run([PY, "-c", program], workspace=tmp_path)
    assert result.ok, result
    assert (tmp_path / "same").stat().st_ino == same_inode  # the host's copy was kept, not rewritten
    assert (tmp_path / "edited").read_text() == "new!"
    assert sorted(os.listdir(tmp_path)) == ["edited", "same", "sub"]
    assert (tmp_path / "sub" / "moved").read_text() == "m" and (
        tmp_path / "sub" / "inner"
    ).read_text() == "i2"


def test_reason_and_limit_fields():
    assert Reason.DISK_LIMIT == "disk_limit" and Reason.DISK_LIMIT in Reason.ALL
    assert Limits().inodes > 0
    with pytest.raises(ValueError, match="inodes must be > 0"):
        Limits(inodes=0)


BEAT = "while :; do date +%s%N >> beat; sleep 0.1; done"


def _start_supervisor(backend: str, workspace: Path, tag: str, docker_url: str | None = None):
    """`agentrl sandbox run` of a loop that writes a heartbeat, started and waited on until it beats."""
    argv = [AGENTRL, "sandbox", "run", "--backend", backend, "--timeout", "60",
            "--workspace", str(workspace)]  # fmt: skip
    if docker_url:
        argv += ["--docker-url", docker_url]
    proc = subprocess.Popen(
        [*argv, "--", "/bin/sh", "-c", BEAT, tag], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 60
    while not (workspace / "beat").exists():
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, "the program never started"
        time.sleep(0.1)
    return proc


def _wait_until_still(path: Path, within_s: float) -> float:
    """Seconds until ``path`` stopped growing (stable for 1 s); fails after ``within_s``."""
    start = time.monotonic()
    size, since = path.stat().st_size, time.monotonic()
    while time.monotonic() - since < 1.0:
        assert time.monotonic() - start < within_s, f"{path} still grows after {within_s} s"
        time.sleep(0.1)
        now = path.stat().st_size
        if now != size:
            size, since = now, time.monotonic()
    return since - start


def _agentrl_cgroups() -> list[str]:
    found = []
    for root, dirs, _ in os.walk("/sys/fs/cgroup"):
        found += [os.path.join(root, d) for d in dirs if d.startswith("agentrl-sbx-")]
        dirs[:] = [d for d in dirs if not d.startswith("agentrl-sbx-")]
    return found


def test_killed_supervisor_leaves_nothing_running_bubblewrap(tmp_path):
    if _bwrap_reason():
        pytest.skip("bubblewrap does not work here")
    from agentrl.sandboxes import cleanup_stale

    ws = tmp_path / "ws"
    ws.mkdir()
    os.chown(ws, 4242, 4343)
    tag = f"agentrl-kill-{secrets.token_hex(4)}"
    proc = _start_supervisor("bubblewrap", ws, tag)
    mine = [c for c in _agentrl_cgroups() if f"-{proc.pid}-" in os.path.basename(c)]
    assert mine, "the run's cgroups are named after their supervisor"
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert _wait_until_still(ws / "beat", within_s=5) < 3
        assert _host_pids_matching(tag) == []
        assert os.path.ismount(ws)  # left behind, until a repair
        repair = subprocess.run([AGENTRL, "sandbox", "cleanup"], capture_output=True, text=True)
        assert repair.returncode == 0, repair.stderr
        assert f"gave {ws} back to uid 4242" in repair.stdout and "removed cgroup" in repair.stdout
        assert not any(os.path.exists(c) for c in mine)
        assert not os.path.ismount(ws)
        assert (os.stat(ws).st_uid, os.stat(ws).st_gid) == (4242, 4343)
        beat = ws / "beat"
        assert beat.stat().st_uid == 4242 and len(beat.read_text().split()) >= 1
    finally:
        proc.kill()
        cleanup_stale()


@pytest.mark.docker
def test_killed_supervisor_leaves_nothing_running_docker(tmp_path, docker_url):
    import docker

    ws = tmp_path / "ws"
    ws.mkdir()
    os.chown(ws, 4242, 4343)
    tag = f"agentrl-kill-{secrets.token_hex(4)}"
    proc = _start_supervisor("docker", ws, tag, docker_url)
    client = docker.DockerClient(base_url=docker_url)
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert _wait_until_still(ws / "beat", within_s=10) < 8  # the container died with its supervisor
        assert _host_pids_matching(tag) == []
        deadline = time.monotonic() + 10
        while client.containers.list(filters={"label": "agentrl.sandbox"}) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert client.containers.list(filters={"label": "agentrl.sandbox"}) == []
        # The next start repairs the workspace: unmounted, the program's files there, the owner's.
        get_sandbox("docker", docker_url=docker_url).close()
        assert not os.path.ismount(ws)
        assert (os.stat(ws).st_uid, os.stat(ws).st_gid) == (4242, 4343)
        assert (ws / "beat").stat().st_uid == 4242
        assert client.containers.list(all=True, filters={"label": "agentrl.sandbox"}) == []
    finally:
        proc.kill()
        client.close()
        from agentrl.sandboxes import cleanup_stale

        cleanup_stale(docker_url)


@pytest.mark.docker
def test_program_in_a_container_dies_by_its_own_deadline(docker_url, tmp_path):
    """A command exec'd the way a session does it ends at its limit even when nobody kills it."""
    sandbox = get_sandbox("docker", Limits(timeout_s=2), docker_url=docker_url)
    try:
        with sandbox.open(tmp_path) as session:
            api = sandbox.client.api
            argv = session.deadline_argv(["/bin/sh", "-c", "sleep 60"], timeout_s=2)
            exec_id = api.exec_create(session.container.id, argv, user=f"{SANDBOX_UID}:{SANDBOX_UID}")["Id"]
            api.exec_start(exec_id, detach=True)
            start = time.monotonic()
            while api.exec_inspect(exec_id)["Running"] and time.monotonic() - start < 30:
                time.sleep(0.1)
            state = api.exec_inspect(exec_id)
            assert not state["Running"] and state["ExitCode"] == 137
            assert 2 <= time.monotonic() - start < 10
    finally:
        sandbox.close()


ESCAPES = "\x1b[2J\x1b[H\x1b]0;pwned-title\x07\x1b[10;10Hmoved\x9b31mred\x1b[?1049h\r\x08\x07end"


def test_cli_neutralises_terminal_escapes_in_human_output_but_json_stays_exact():
    if _bwrap_reason():
        pytest.skip("bubblewrap does not work here")
    program = f"import sys; sys.stdout.write({ESCAPES!r}); sys.stderr.write({ESCAPES!r})"
    base = [AGENTRL, "sandbox", "run", "--backend", "bubblewrap"]
    human = subprocess.run([*base, "--", PY, "-c", program], capture_output=True)
    out = human.stdout.decode() + human.stderr.decode()
    assert human.returncode == 0, out
    assert not any(ch in out for ch in "\x1b\x9b\x07\x08\r"), repr(out)
    assert "\\x1b[2J" in out and "\\x1b]0;pwned-title\\x07" in out and "\\x9b31m" in out
    exact = subprocess.run([*base, "--json", "--", PY, "-c", program], capture_output=True, text=True)
    data = json.loads(exact.stdout)
    assert data["stdout"] == ESCAPES and data["stderr"] == ESCAPES
