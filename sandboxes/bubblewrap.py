"""bubblewrap backend: Linux namespaces, read-only system binds, cgroup limits.

Each command gets a fresh ``bwrap`` with its own pid, network, IPC, UTS and cgroup namespaces: inside,
the only network interface is a loopback of its own, the command is pid 2 of a private pid namespace and
sees a read-only root built from ``/usr`` (plus ``/bin``, ``/lib``... as on the host), a few files of
``/etc``, the Python prefix, ``/tmp``, ``/dev/shm`` and the workspace at ``/workspace``. Nothing of the host
environment is passed in.

Who the program is. Started by root (the usual case), ``bwrap`` itself runs as root without a user
namespace (one where host root were mapped would leave the program host root's powers over
``/proc/sys`` and setuid files), sets everything up, and the command is started through ``setpriv`` as
the unprivileged host user :data:`~agentrl.sandboxes.base.SANDBOX_UID` with no capabilities (bounding
set empty), ``no_new_privs`` and a seccomp filter that refuses new user namespaces and the kernel
keyring (:mod:`.seccomp`). ``/proc/sys`` is read-only and ``/sys`` is not mounted. The workspace,
``/tmp`` and ``/dev/shm`` live in the session's quota filesystem (:mod:`.quota`: ``disk_mb`` and
``inodes``, ``nosuid``, setuid/setgid bits cleared after every command; ``/tmp`` and ``/dev/shm`` are
emptied before each command). Started by another user, ``bwrap`` maps that user to
:data:`SANDBOX_UID` in a user namespace with new user namespaces disabled, and the workspace is the
host directory itself (no quota: mounting needs root).

Limits: memory, processes and CPU through a cgroup per command (v1 or v2, whichever is writable), named
after its supervisor (``agentrl-sbx-<pid namespace>-<pid>-<start time>-<random>``) so that
:func:`sweep_stale_cgroups`, run when a sandbox starts, removes those a killed supervisor left; file
size and core dumps through rlimits (``prlimit``), the wall clock and the output size by this process.
When the pid namespace's first process dies the kernel kills everything left in it, and
``--die-with-parent`` kills it when the supervisor dies (``kill -9`` included), so the whole tree goes
with it; the cgroup is emptied as well before it is removed. Without a writable cgroup hierarchy,
memory falls back to ``RLIMIT_AS`` and processes to ``RLIMIT_NPROC``: ``availability`` says so.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
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
    supervisor_alive,
    supervisor_id,
)
from agentrl.sandboxes.quota import open_workspace, recover_stale
from agentrl.sandboxes.seccomp import deny_user_namespaces

log = logging.getLogger(__name__)

#: Files of the host's /etc that programs need (dynamic loader cache, alternatives symlinks, time zone).
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime", "nsswitch.conf")
PASSWD = (
    f"root:x:0:0:root:/root:/bin/sh\nsandbox:x:{SANDBOX_UID}:{SANDBOX_GID}:sandbox:/tmp:/usr/sbin/nologin\n"
)
GROUP = f"root:x:0:\nsandbox:x:{SANDBOX_GID}:\n"
#: The command's prefix when bwrap runs as root: become the sandbox user, keep no capability at all.
SETPRIV = [
    "/usr/bin/setpriv", f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_GID}", "--clear-groups",
    "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all", "--no-new-privs", "--",
]  # fmt: skip
#: What setpriv needs to do that (bwrap drops every other capability before it runs).
SETPRIV_CAPS = ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP")
#: Stand-ins in the bind operations for the descriptors of the passwd/group data (NUL: never in a path).
_PASSWD_FD, _GROUP_FD = "\0passwd-fd", "\0group-fd"
CGROUP_PREFIX = "agentrl-sbx-"
_OURS = re.compile(rf"^{CGROUP_PREFIX}(\d+-\d+-\d+)-[0-9a-f]+$")
_LEGACY = re.compile(rf"^{CGROUP_PREFIX}[0-9a-f]{{12}}$")  # before cgroups were named after their supervisor


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
        name = f"{CGROUP_PREFIX}{supervisor_id()}-{secrets.token_hex(4)}"
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


def _cgroup_pids(directory: str) -> list[int]:
    try:
        return [int(x) for x in Path(directory, "cgroup.procs").read_text().split()]
    except OSError:
        return []


def sweep_stale_cgroups(legacy_age_s: float = 600.0) -> list[str]:
    """Remove the cgroups of commands whose supervisor is gone (killed before it could remove them).

    A cgroup named after a live supervisor is left alone (it may be about to be joined); one from before
    cgroups were named so is removed only when empty and older than ``legacy_age_s``. Returns one line
    per removed cgroup.
    """
    removed = []
    for root, dirs, _ in os.walk(Cgroup.ROOT):
        for name in [d for d in dirs if d.startswith(CGROUP_PREFIX)]:
            path = os.path.join(root, name)
            ours = _OURS.match(name)
            if ours:
                if supervisor_alive(ours.group(1)) is not False:
                    continue
            elif not _LEGACY.match(name) or _cgroup_pids(path):
                continue
            else:
                try:
                    if time.time() - os.stat(path).st_mtime < legacy_age_s:
                        continue
                except OSError:
                    continue
            group = Cgroup({"stale": Path(path)}, 1)
            group.kill_all(wait_s=2.0)
            group.remove()
            if not os.path.exists(path):
                removed.append(f"removed cgroup {path}")
        dirs[:] = [d for d in dirs if not d.startswith(CGROUP_PREFIX)]
    return removed


def _system_binds() -> list[list[str]]:
    """bwrap operations for the read-only system part of the root."""
    ops = [["--ro-bind", "/usr", "/usr"]]
    for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = Path("/") / top
        if path.is_symlink():
            ops.append(["--symlink", os.readlink(path), f"/{top}"])
        elif path.is_dir():
            ops.append(["--ro-bind", str(path), f"/{top}"])
    for name in ETC_FILES:
        if os.path.exists(f"/etc/{name}"):
            ops.append(["--ro-bind", f"/etc/{name}", f"/etc/{name}"])
    for prefix in python_prefixes():
        ops.append(["--ro-bind", prefix, prefix])
    return ops


def _parent_dirs(ops: list[list[str]]) -> list[str]:
    """bwrap operations making every parent of a mount point world-traversable (mode 0755).

    bwrap makes missing parents (``/root`` for ``/root/.pyenv/...``) with mode 0700, which only root
    could cross; the sandbox user must reach what is bound below them.
    """
    dests = [op[-1] for op in ops]
    parents = {
        str(parent)
        for dest in dests
        for parent in PurePosixPath(dest).parents
        if str(parent) != "/"
        and not any(str(parent) == d or str(parent).startswith(d.rstrip("/") + "/") for d in dests)
    }
    out: list[str] = []
    for parent in sorted(parents, key=lambda p: (p.count("/"), p)):
        out += ["--perms", "0755", "--dir", parent]
    return out


class BubblewrapSession(Session):
    backend: ClassVar[str] = "bubblewrap"

    def __init__(self, workspace: Path, limits: Limits, ro_binds: Mapping[str, str], env: Mapping[str, str]):
        super().__init__(workspace, limits, ro_binds, env)
        self.as_root = os.geteuid() == 0
        self.storage = open_workspace(workspace, limits)
        ops = _system_binds()
        ops += [["--ro-bind", host, inside] for host, inside in self.ro_binds.items()]
        ops += [["--perms", "0644", "--ro-bind-data", _PASSWD_FD, "/etc/passwd"]]
        ops += [["--perms", "0644", "--ro-bind-data", _GROUP_FD, "/etc/group"]]
        ops += [["--bind", str(self.storage.inner), WORKSPACE]]
        if self.storage.tmp is not None:
            ops.append(["--bind", str(self.storage.tmp), "/tmp"])
        self._ops = ops
        self._parents = _parent_dirs(ops + [["--tmpfs", "/tmp"], ["--proc", "/proc"], ["--dev", "/dev"]])

    def _bwrap_argv(
        self, argv: list[str], env: Mapping[str, str], passwd_fd: int, group_fd: int, seccomp_fd: int | None
    ) -> list[str]:
        if self.as_root:  # no user namespace: bwrap sets up as root, the command starts as the sandbox user
            args = ["bwrap", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
                    "--unshare-cgroup-try", "--cap-drop", "ALL"]  # fmt: skip
            for cap in SETPRIV_CAPS:
                args += ["--cap-add", cap]
            if seccomp_fd is not None:
                args += ["--seccomp", str(seccomp_fd)]
            argv = [*SETPRIV, *argv]
        else:
            args = ["bwrap", "--unshare-all", "--unshare-user", "--uid", str(SANDBOX_UID),
                    "--gid", str(SANDBOX_GID), "--disable-userns", "--cap-drop", "ALL"]  # fmt: skip
        args += ["--die-with-parent", "--new-session", "--hostname", "sandbox", "--clearenv", *self._parents]
        data_fds = {_PASSWD_FD: str(passwd_fd), _GROUP_FD: str(group_fd)}
        for op in self._ops:
            args += [data_fds.get(a, a) for a in op]
        if self.storage.tmp is None:
            args += ["--size", str(self.limits.disk_mb << 20), "--tmpfs", "/tmp"]
        args += ["--proc", "/proc", "--dev", "/dev"]
        if self.storage.shm is not None:
            args += ["--bind", str(self.storage.shm), "/dev/shm"]
        if self.as_root:  # unwritable for the sandbox user anyway; read-only even for a root inside
            args += [
                "--ro-bind",
                "/proc/sys",
                "/proc/sys",
                "--ro-bind-try",
                "/proc/sysrq-trigger",
                "/proc/sysrq-trigger",
            ]
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
        if self.storage.too_big:
            return RunResult(
                None, "", f"sandbox: the workspace does not fit in its quota ({limits.disk_mb} MB, "
                f"{limits.inodes} inodes); nothing was run\n", 0.0, Reason.DISK_LIMIT, self.backend,
            )  # fmt: skip
        start = time.monotonic()
        self.storage.clear_tmp()
        try:
            cgroup: Cgroup | None = Cgroup.create(limits)
        except OSError:
            cgroup = None
        # bwrap reads the data files and the seccomp program from pipes we fill before it starts reading.
        data = [PASSWD.encode(), GROUP.encode()]
        seccomp = deny_user_namespaces() if self.as_root else None
        if seccomp is not None:
            data.append(seccomp)
        pipes = [os.pipe() for _ in data]
        for (_, w), payload in zip(pipes, data, strict=True):
            os.write(w, payload)
            os.close(w)
        rlimits = [f"--fsize={limits.disk_mb << 20}", "--core=0", "--nofile=1024"]
        if cgroup is None:  # fallback: address space and process count (of the sandbox user)
            rlimits += [f"--as={limits.memory_mb << 20}", f"--nproc={limits.pids}"]
        bwrap = self._bwrap_argv(
            argv, full_env, pipes[0][0], pipes[1][0], pipes[2][0] if seccomp is not None else None
        )
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
                pass_fds=tuple(r for r, _ in pipes),
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
        full = self._after_run()
        if oom:
            reason = Reason.OUT_OF_MEMORY
        elif outcome == "overflow":
            reason = Reason.OUTPUT_LIMIT
        elif not killed and (exit_code == 125 or (exit_code == 1 and stderr.startswith("bwrap: "))):
            reason = Reason.ERROR  # the launcher or bwrap itself failed before the command ran
        elif full:
            reason = Reason.DISK_LIMIT
        elif outcome == "timeout":
            reason = Reason.TIMEOUT
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

    def _after_run(self) -> bool:
        """Sweep setuid bits off the workspace; whether the quota is full."""
        try:
            return self.storage.after_run()
        except OSError as exc:  # the workspace is the program's: report, never fail the run over it
            log.warning("sandbox workspace %s: sweep after the run failed: %s", self.workspace, exc)
            return False

    def _close(self) -> None:
        self.storage.close(copy_back=self.keep_files)

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
        if os.geteuid() == 0 and not os.access(SETPRIV[0], os.X_OK):
            return False, f"{SETPRIV[0]} is not installed (util-linux)"
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
        if os.geteuid() != 0:
            return True, f"works (namespaces, cgroup v{group.version} limits; no disk quota: that needs root)"
        return True, f"works (namespaces, cgroup v{group.version} limits, disk and inode quota)"

    def __init__(
        self,
        limits: Limits | None = None,
        *,
        ro_binds: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
    ):
        super().__init__(limits, ro_binds=ro_binds, env=env)
        for line in cleanup_stale():
            log.info("sandbox: %s", line)

    def open(self, workspace: str | os.PathLike[str], *, limits: Limits | None = None) -> Session:
        if shutil.which("bwrap") is None:
            raise SandboxUnavailable("bwrap is not installed (apt-get install bubblewrap)")
        path = Path(workspace).resolve()
        path.mkdir(parents=True, exist_ok=True)
        try:
            return BubblewrapSession(path, limits or self.limits, self.ro_binds, self.env)
        except OSError as exc:
            raise SandboxUnavailable(f"cannot set up the workspace {path}: {exc}") from exc


def cleanup_stale() -> list[str]:
    """Repair what killed supervisors of this backend left: their workspaces and cgroups."""
    return recover_stale() + sweep_stale_cgroups()
