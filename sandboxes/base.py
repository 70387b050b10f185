"""The sandbox interface shared by every backend.

A :class:`Sandbox` runs commands in a *workspace* (a host directory, seen inside as ``/workspace``)
under :class:`Limits` (wall time, memory, CPU, processes, disk, output size) with no network, and
returns a :class:`RunResult` that says how the command ended. Two ways to use one:

* ``sandbox.run(command, workspace=...)``: one command, one fresh sandbox;
* ``with sandbox.open(workspace) as session: session.exec(...)``: several commands in the same
  workspace (Docker keeps one container alive between them; bubblewrap starts a fresh namespace per
  command, which costs milliseconds).

Containment is the backend's job; this module only fixes the contract. A sandbox failure (the
backend cannot start, the daemon died) is reported as ``reason="error"`` with the message in
``stderr``: a failing sandbox fails its episode, never the run.
"""

from __future__ import annotations

import abc
import os
import queue
import shlex
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from agentrl.errors import AgentrlError

#: Where the workspace is mounted inside every sandbox.
WORKSPACE = "/workspace"
#: Host user and group the sandboxed command runs as, in every backend: a dedicated unprivileged id that owns
#: nothing on the host (65533 sits in the range Debian keeps unallocated, next to ``nobody``; a user of its
#: own, so per-user kernel accounting such as open inotify instances is not shared with host services that
#: run as ``nobody``). It is the same number inside and outside: no user namespace remaps it.
SANDBOX_UID = 65533
SANDBOX_GID = 65533


class Reason:
    """Why a command stopped (the values of ``RunResult.reason``)."""

    FINISHED = "finished"  # exited by itself (any exit code)
    TIMEOUT = "timeout"  # hit the wall-clock limit; the whole process tree was killed
    OUT_OF_MEMORY = "out_of_memory"  # killed by the memory limit
    OUTPUT_LIMIT = "output_limit"  # wrote more than the output limit; killed, output cut
    DISK_LIMIT = "disk_limit"  # the workspace + /tmp filesystem is full (bytes or inodes) at the end
    ERROR = "error"  # the sandbox itself failed (see stderr); the command may not have run

    ALL: ClassVar[tuple[str, ...]] = (FINISHED, TIMEOUT, OUT_OF_MEMORY, OUTPUT_LIMIT, DISK_LIMIT, ERROR)


@dataclass(frozen=True)
class Limits:
    """Resource limits of one command. Every backend enforces all of them (see its module).

    ``disk_mb`` and ``inodes`` bound everything the program can write, the workspace and ``/tmp``
    together: when run by root, both live in one size- and inode-limited ``tmpfs`` per session (see
    :mod:`.quota`). Its pages are memory, charged to the sandbox that writes them, so files count against
    ``memory_mb`` too. A command that leaves it full (no byte or no inode left) ends with
    ``Reason.DISK_LIMIT``. The host pays for the quota's contents outside the command's time limit (they
    are copied in when a session opens and what changed is copied back when it closes: measured here,
    about 0.2 ms per file in and 0.7 ms per file plus ~250 MB/s out), which is why ``inodes`` is modest.
    """

    timeout_s: float = 60.0  # wall clock, start to end of the command
    memory_mb: int = 1024  # resident memory of the whole process tree (files it writes included)
    cpus: float = 1.0  # CPU time share (1.0 = one core)
    pids: int = 128  # processes and threads alive at once
    disk_mb: int = 512  # bytes of workspace + /tmp together, and the largest single file
    inodes: int = 10_000  # files, directories and links of workspace + /tmp together
    output_bytes: int = 1 << 20  # per stream (stdout, stderr); more is cut and the command killed

    def __post_init__(self) -> None:
        for name in ("timeout_s", "memory_mb", "cpus", "pids", "disk_mb", "inodes", "output_bytes"):
            if not getattr(self, name) > 0:
                raise ValueError(f"sandbox limit {name} must be > 0, got {getattr(self, name)!r}")

    def with_(self, **changes: Any) -> Limits:
        """A copy with some fields changed (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


@dataclass
class RunResult:
    """How one sandboxed command ended. ``stdout``/``stderr`` hold at most ``Limits.output_bytes`` each."""

    exit_code: int | None  # None when the command never ran or was killed before exiting by itself
    stdout: str
    stderr: str
    duration_s: float
    reason: str
    backend: str = ""
    truncated: bool = False  # True when an output stream was cut at the limit
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Finished by itself with exit code 0."""
        return self.reason == Reason.FINISHED and self.exit_code == 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SandboxUnavailable(AgentrlError, RuntimeError):
    """The backend cannot run on this machine (the message says why)."""


def as_argv(command: str | Sequence[str]) -> list[str]:
    """A string is a shell command line (run by ``/bin/sh -c``); a sequence is an argv."""
    if isinstance(command, str):
        return ["/bin/sh", "-c", command]
    argv = [str(a) for a in command]
    if not argv:
        raise ValueError("empty command")
    return argv


def describe(argv: Sequence[str]) -> str:
    return shlex.join(argv)[:200]


def python_prefixes() -> list[str]:
    """Host directories that hold this Python and its packages, bound read-only into sandboxes.

    Paths under ``/usr`` are already covered by the system binds.
    """
    out: list[str] = []
    for p in (sys.base_prefix, sys.prefix, sys.exec_prefix):
        p = os.path.realpath(p)
        if p not in out and not (p == "/usr" or p.startswith("/usr/")):
            out.append(p)
    return out


def process_start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), or None when no such process runs.

    A pid alone does not name a process (pids are reused); the pair ``(pid, start time)`` does.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


_SUPERVISOR_IDS: dict[int, str] = {}


def supervisor_id() -> str:
    """``"<pid namespace>-<pid>-<start time>"`` of this process: names the sandboxes it supervises, so a
    later start can tell whether their supervisor is gone (see :func:`supervisor_alive`)."""
    pid = os.getpid()  # a forked child is a supervisor of its own
    if pid not in _SUPERVISOR_IDS:
        pidns = os.stat("/proc/self/ns/pid").st_ino
        _SUPERVISOR_IDS[pid] = f"{pidns}-{pid}-{process_start_time(pid)}"
    return _SUPERVISOR_IDS[pid]


def supervisor_alive(ident: str) -> bool | None:
    """True when the supervisor named ``ident`` still runs, False when it is gone, None when it cannot
    be told from here (another pid namespace: leave its sandboxes alone)."""
    try:
        pidns, pid, start = (int(x) for x in ident.split("-"))
    except ValueError:
        return None
    if pidns != os.stat("/proc/self/ns/pid").st_ino:
        return None
    return process_start_time(pid) == start


def default_env(limits: Limits, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The complete environment of a sandboxed command: nothing is inherited from the host."""
    threads = str(max(1, int(limits.cpus)))
    env = {
        "PATH": f"{os.path.dirname(os.path.realpath(sys.executable))}:/usr/local/bin:/usr/bin:/bin",
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
    }
    env.update(extra or {})
    return env


class StreamCollector:
    """Collects chunks of two streams from reader threads, bounded per stream.

    ``feed`` is called from reader threads; ``wait`` blocks until both streams closed, the deadline
    passed, or a stream went over its bound (what happened is returned).
    """

    def __init__(self, limit_bytes: int):
        self.limit = limit_bytes
        self.parts: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        self.sizes = {"stdout": 0, "stderr": 0}
        self.truncated = False
        self._events: queue.Queue[str] = queue.Queue()
        self._open = 0

    def start_reader(self, name: str, chunks: Iterator[bytes]) -> threading.Thread:
        self._open += 1

        def pump() -> None:
            try:
                for (
                    chunk
                ) in chunks:  # drain to the end even past the bound: a blocked writer can stall a kill
                    if chunk:
                        self.feed(name, chunk)
            except Exception:  # the stream broke because the sandbox was killed: nothing to report
                pass
            finally:
                self._events.put("closed")

        thread = threading.Thread(target=pump, daemon=True, name=f"sandbox-{name}")
        thread.start()
        return thread

    def feed(self, name: str, chunk: bytes) -> bool:
        """Store ``chunk``; return True once the stream is over its bound (the reader may stop)."""
        room = self.limit - self.sizes[name]
        if room > 0:
            self.parts[name].append(chunk[:room])
        self.sizes[name] += len(chunk)
        if self.sizes[name] > self.limit:
            if not self.truncated:
                self.truncated = True
                self._events.put("overflow")
            return True
        return False

    def wait(self, deadline: float) -> str:
        """Return ``"closed"`` (both streams ended), ``"overflow"`` or ``"timeout"``."""
        while self._open > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            try:
                event = self._events.get(timeout=remaining)
            except queue.Empty:
                return "timeout"
            if event == "overflow":
                return "overflow"
            self._open -= 1
        return "closed"

    def text(self, name: str) -> str:
        return b"".join(self.parts[name]).decode("utf-8", errors="replace")


class Session(abc.ABC):
    """A workspace with limits, in which commands run one after another."""

    backend: ClassVar[str] = ""

    def __init__(self, workspace: Path, limits: Limits, ro_binds: Mapping[str, str], env: Mapping[str, str]):
        self.workspace = workspace
        self.limits = limits
        self.ro_binds = dict(ro_binds)
        self.env = dict(env)
        self.closed = False
        #: Whether ``close`` hands the program's files back to the host directory (False: a temporary
        #: workspace that is deleted right after, so copying them out would be wasted).
        self.keep_files = True

    @abc.abstractmethod
    def exec(
        self,
        command: str | Sequence[str],
        *,
        timeout_s: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> RunResult:
        """Run ``command`` (cwd ``/workspace``) and wait for it; never raises for what the command does."""

    def _close(self) -> None:
        """Free backend resources (called once)."""
        return None

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Sandbox(abc.ABC):
    """A backend: makes sessions with fixed default limits and read-only binds.

    ``ro_binds`` maps host paths to paths inside the sandbox (e.g. a task's data at ``/data``).
    """

    name: ClassVar[str] = ""

    def __init__(
        self,
        limits: Limits | None = None,
        *,
        ro_binds: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
    ):
        self.limits = limits or Limits()
        self.ro_binds = {str(Path(h).resolve()): c for h, c in (ro_binds or {}).items()}
        for host in self.ro_binds:
            if not os.path.exists(host):
                raise FileNotFoundError(f"sandbox bind source {host} does not exist")
        self.env = dict(env or {})

    @classmethod
    @abc.abstractmethod
    def availability(cls, **kwargs: Any) -> tuple[bool, str]:
        """``(works, why)``: whether this backend can run here, and a one-line reason."""

    @abc.abstractmethod
    def open(self, workspace: str | os.PathLike[str], *, limits: Limits | None = None) -> Session:
        """A session on ``workspace`` (created if missing), mounted read-write at ``/workspace``."""

    def run(
        self,
        command: str | Sequence[str],
        *,
        workspace: str | os.PathLike[str] | None = None,
        limits: Limits | None = None,
        env: Mapping[str, str] | None = None,
    ) -> RunResult:
        """Run one command in a fresh sandbox; a temporary workspace is used (and removed) if none given."""
        import tempfile

        if workspace is None:
            with tempfile.TemporaryDirectory(prefix="agentrl-ws-") as tmp:
                with self.open(tmp, limits=limits) as session:
                    session.keep_files = False
                    return session.exec(command, env=env)
        with self.open(workspace, limits=limits) as session:
            return session.exec(command, env=env)

    def close(self) -> None:
        """Free backend-wide resources (a Docker client); sessions are closed on their own."""
        return None
