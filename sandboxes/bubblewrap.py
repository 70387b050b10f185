"""bubblewrap backend: Linux namespaces, read-only system binds, cgroup limits.

Each command gets a fresh ``bwrap`` with every namespace unshared (user, pid, net, ipc, uts,
cgroup): inside, the only network interface is a loopback of its own, the command is pid 2 of a
private pid namespace, runs as uid/gid 65534 with every capability dropped, and sees a read-only
root built from ``/usr`` (plus ``/bin``, ``/lib``... as on the host), a few files of ``/etc``, the
Python prefix, a private size-limited ``/tmp`` and the workspace at ``/workspace``. Nothing of the
host environment is passed in.

Limits: memory, processes and CPU through a cgroup per command (v1 or v2, whichever is writable),
file size and core dumps through rlimits (``prlimit``), the wall clock and the output size by this
process. When the pid namespace's first process dies the kernel kills everything left in it, so
killing ``bwrap`` takes the whole tree with it (background children and daemons included); the
cgroup is emptied as well before it is removed. Without a writable cgroup hierarchy, memory falls
back to ``RLIMIT_AS`` and processes to ``RLIMIT_NPROC`` (which root ignores): ``availability``
says so.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from agentrl.sandboxes.base import (
    SANDBOX_GID,
    SANDBOX_UID,
    WORKSPACE,
    Limits,
    Reason,
    RunResult,
    Sandbox,
    SandboxUnavailable,
    Session,
    StreamCollector,
    as_argv,
    default_env,
    python_prefixes,
)

#: Files of the host's /etc that programs need (dynamic loader cache, alternatives symlinks, time zone).
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime", "nsswitch.conf")
PASSWD = (
    f"root:x:0:0:root:/root:/bin/sh\nnobody:x:{SANDBOX_UID}:{SANDBOX_GID}:nobody:/tmp:/usr/sbin/nologin\n"
)
GROUP = f"root:x:0:\nnogroup:x:{SANDBOX_GID}:\n"


class Cgroup:
    """One cgroup per command, in v1 (memory, pids, cpu hierarchies) or v2 (unified)."""

    ROOT = Path("/sys/fs/cgroup")

    def __init__(self, dirs: dict[str, Path], version: int):
        self.dirs = dirs  # controller -> directory ("unified" for v2)
        self.version = version

    @classmethod
    def _own_path(cls, controller: str) -> str:
        """This process's cgroup path in a v1 hierarchy (or v2 with ``controller=""``)."""
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controller in controllers.split(",") if controller else controllers == "":
                return path
        return "/"

    @classmethod
    def create(cls, limits: Limits) -> Cgroup:
        """Make and configure a fresh cgroup; raise ``OSError`` when none can be made here."""
        name = f"agentrl-sbx-{uuid.uuid4().hex[:12]}"
        if (cls.ROOT / "memory" / "memory.limit_in_bytes").exists():
            dirs: dict[str, Path] = {}
            try:
                for ctl in ("memory", "pids", "cpu"):
                    d = cls.ROOT / ctl / cls._own_path(ctl).lstrip("/") / name
                    d.mkdir()
                    dirs[ctl] = d
                mem = str(limits.memory_mb << 20)
                (dirs["memory"] / "memory.limit_in_bytes").write_text(mem)
                memsw = dirs["memory"] / "memory.memsw.limit_in_bytes"
                if memsw.exists():
                    memsw.write_text(mem)
                (dirs["pids"] / "pids.max").write_text(str(limits.pids))
                period = 100_000
                (dirs["cpu"] / "cpu.cfs_period_us").write_text(str(period))
                (dirs["cpu"] / "cpu.cfs_quota_us").write_text(str(max(1000, int(limits.cpus * period))))
            except OSError:
                Cgroup(dirs, 1).remove()
                raise
            return cls(dirs, 1)
        if (cls.ROOT / "cgroup.controllers").exists():
            d = cls.ROOT / cls._own_path("").lstrip("/") / name
            d.mkdir()
            group = cls({"unified": d}, 2)
            try:
                (d / "memory.max").write_text(str(limits.memory_mb << 20))
                if (d / "memory.swap.max").exists():
                    (d / "memory.swap.max").write_text("0")
                (d / "pids.max").write_text(str(limits.pids))
                (d / "cpu.max").write_text(f"{max(1000, int(limits.cpus * 100_000))} 100000")
            except OSError:
                group.remove()
                raise
            return group
        raise OSError("no cgroup hierarchy with memory/pids controllers at /sys/fs/cgroup")

    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs.values()]

    def pids(self) -> set[int]:
        out: set[int] = set()
        for f in self.procs_files():
            try:
                out.update(int(x) for x in Path(f).read_text().split())
            except OSError:
                pass
        return out

    def oom_kills(self) -> int:
        """How many processes the memory limit killed in this cgroup."""
        f = (
            self.dirs["memory"] / "memory.oom_control"
            if self.version == 1
            else self.dirs["unified"] / "memory.events"
        )
        try:
            for line in f.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except OSError:
            pass
        return 0

    def kill_all(self, wait_s: float = 5.0) -> None:
        """SIGKILL every process in the cgroup until it is empty (forks racing the kill are caught)."""
        end = time.monotonic() + wait_s
        while time.monotonic() < end:
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.01)

    def remove(self) -> None:
        for d in self.dirs.values():
            for _ in range(100):  # a killed process leaves its cgroup asynchronously
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)


def _system_binds() -> list[str]:
    """bwrap arguments for the read-only system part of the root."""
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = Path("/") / top
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), f"/{top}"]
        elif path.is_dir():
            args += ["--ro-bind", str(path), f"/{top}"]
    for name in ETC_FILES:
        if os.path.exists(f"/etc/{name}"):
            args += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    for prefix in python_prefixes():
        args += ["--ro-bind", prefix, prefix]
    return args


class BubblewrapSession(Session):
    backend: ClassVar[str] = "bubblewrap"

    def __init__(self, workspace: Path, limits: Limits, ro_binds: Mapping[str, str], env: Mapping[str, str]):
        super().__init__(workspace, limits, ro_binds, env)
        self._base_args = _system_binds()

    def _bwrap_argv(
        self, argv: list[str], env: Mapping[str, str], passwd_fd: int, group_fd: int
    ) -> list[str]:
        args = [
            "bwrap",
            "--unshare-all",
            "--unshare-user",
            "--uid", str(SANDBOX_UID),
            "--gid", str(SANDBOX_GID),
            "--disable-userns",
            "--cap-drop", "ALL",
            "--die-with-parent",
            "--new-session",
            "--hostname", "sandbox",
            "--clearenv",
            *self._base_args,
            "--ro-bind-data", str(passwd_fd), "/etc/passwd",
            "--ro-bind-data", str(group_fd), "/etc/group",
            "--proc", "/proc",
            "--dev", "/dev",
            "--size", str(self.limits.disk_mb << 20), "--tmpfs", "/tmp",
            "--bind", str(self.workspace), WORKSPACE,
        ]  # fmt: skip
        for host, inside in self.ro_binds.items():
            args += ["--ro-bind", host, inside]
        for key, value in env.items():
            args += ["--setenv", key, value]
        args += ["--remount-ro", "/", "--chdir", WORKSPACE, "--", *argv]
        return args

    def exec(
        self,
        command: str | Sequence[str],
        *,
        timeout_s: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> RunResult:
        if self.closed:
            raise RuntimeError("this sandbox session is closed")
        limits = self.limits.with_(timeout_s=timeout_s)
        argv = as_argv(command)
        full_env = default_env(limits, {**self.env, **(env or {})})
        start = time.monotonic()
        try:
            cgroup: Cgroup | None = Cgroup.create(limits)
        except OSError:
            cgroup = None
        # bwrap reads the two data files from pipes we fill before it starts reading.
        pipes = [os.pipe(), os.pipe()]
        os.write(pipes[0][1], PASSWD.encode())
        os.write(pipes[1][1], GROUP.encode())
        for _, w in pipes:
            os.close(w)
        rlimits = [f"--fsize={limits.disk_mb << 20}", "--core=0", "--nofile=1024"]
        if cgroup is None:  # fallback: address space and (for non-root users) process count
            rlimits += [f"--as={limits.memory_mb << 20}", f"--nproc={limits.pids}"]
        bwrap = self._bwrap_argv(argv, full_env, pipes[0][0], pipes[1][0])
        # The launcher joins the cgroup(s) before anything else runs, then becomes prlimit -> bwrap.
        join = 'for f; do [ "$f" = -- ] && break; echo $$ > "$f" || exit 125; shift; done; shift; exec "$@"'
        launcher = [
            "/bin/sh",
            "-c",
            join,
            "sh",
            *(cgroup.procs_files() if cgroup else []),
            "--",
            "prlimit",
            *rlimits,
            "--",
            *bwrap,
        ]
        try:
            proc = subprocess.Popen(
                launcher,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(pipes[0][0], pipes[1][0]),
                env={"PATH": "/usr/bin:/bin"},
                start_new_session=True,
            )
        except OSError as exc:
            if cgroup:
                cgroup.remove()
            return RunResult(
                None, "", f"sandbox error: cannot start bwrap: {exc}", 0.0, Reason.ERROR, self.backend
            )
        finally:
            for r, _ in pipes:
                os.close(r)
        collector = StreamCollector(limits.output_bytes)
        assert proc.stdout is not None and proc.stderr is not None
        readers = [
            collector.start_reader("stdout", iter(lambda: proc.stdout.read1(65536), b"")),  # type: ignore[union-attr]
            collector.start_reader("stderr", iter(lambda: proc.stderr.read1(65536), b"")),  # type: ignore[union-attr]
        ]
        outcome = collector.wait(start + limits.timeout_s)
        killed = outcome != "closed"
        if killed:
            self._kill(proc, cgroup)
        try:
            exit_code: int | None = proc.wait(
                timeout=max(0.0, start + limits.timeout_s - time.monotonic()) + 1.0
            )
        except subprocess.TimeoutExpired:  # the streams closed but the process lingers: kill it
            self._kill(proc, cgroup)
            exit_code = proc.wait()
            killed, outcome = True, "timeout"
        duration = time.monotonic() - start
        for t in readers:
            t.join(timeout=2.0)
        oom = 0
        if cgroup is not None:
            cgroup.kill_all()  # daemons that outlived the command (none should: pid namespace)
            oom = cgroup.oom_kills()
            cgroup.remove()
        stderr = collector.text("stderr")
        if oom:
            reason = Reason.OUT_OF_MEMORY
        elif outcome == "overflow":
            reason = Reason.OUTPUT_LIMIT
        elif outcome == "timeout":
            reason = Reason.TIMEOUT
        elif exit_code == 125 or (exit_code == 1 and stderr.startswith("bwrap: ")):
            reason = Reason.ERROR  # the launcher or bwrap itself failed before the command ran
        else:
            reason = Reason.FINISHED
        if killed:
            exit_code = None
        elif exit_code is not None and exit_code < 0:  # killed by a signal: report it the shell's way
            exit_code = 128 - exit_code
        return RunResult(
            exit_code=exit_code,
            stdout=collector.text("stdout"),
            stderr=stderr,
            duration_s=duration,
            reason=reason,
            backend=self.backend,
            truncated=collector.truncated,
            extra={"oom_kills": oom, "cgroup": cgroup.version if cgroup else None},
        )

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes], cgroup: Cgroup | None) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if cgroup is not None:
            cgroup.kill_all()


class BubblewrapSandbox(Sandbox):
    """Sandbox backend on ``bwrap`` (see the module docstring for what it isolates and limits)."""

    name: ClassVar[str] = "bubblewrap"

    @classmethod
    def availability(cls, **kwargs: Any) -> tuple[bool, str]:
        if shutil.which("bwrap") is None:
            return False, "bwrap is not installed (apt-get install bubblewrap)"
        if shutil.which("prlimit") is None:
            return False, "prlimit is not installed (util-linux)"
        probe = subprocess.run(
            ["bwrap", "--unshare-all", "--unshare-user", "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin",
             "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64", "--proc", "/proc", "--", "/usr/bin/true"],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        if probe.returncode != 0:
            return False, f"bwrap cannot create namespaces here: {probe.stderr.strip()[:200]}"
        try:
            group = Cgroup.create(Limits())
        except OSError as exc:
            return (
                True,
                f"works with rlimits only (no writable cgroup: {exc}); process limits need a non-root user",
            )
        group.remove()
        return True, f"works (namespaces, cgroup v{group.version} limits)"

    def open(self, workspace: str | os.PathLike[str], *, limits: Limits | None = None) -> Session:
        if shutil.which("bwrap") is None:
            raise SandboxUnavailable("bwrap is not installed (apt-get install bubblewrap)")
        path = Path(workspace).resolve()
        path.mkdir(parents=True, exist_ok=True)
        return BubblewrapSession(path, limits or self.limits, self.ro_binds, self.env)
