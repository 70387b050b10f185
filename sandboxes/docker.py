"""Docker backend, through the ``docker`` SDK.

A session is one container, kept alive while commands are ``exec``'d into it: network disabled
(``network_mode="none"``: only the container's own loopback), every capability dropped,
``no-new-privileges``, Docker's default seccomp profile, read-only root, the unprivileged user
:data:`~agentrl.sandboxes.base.SANDBOX_UID`, limits on pids, memory (swap included), CPU and file size
(``RLIMIT_FSIZE``). Started by root, the workspace, ``/tmp`` and ``/dev/shm`` are the session's quota
filesystem (:mod:`.quota`: ``disk_mb`` and ``inodes``; setuid/setgid bits cleared after every
command); otherwise the workspace directory is bound as it is and ``/tmp`` is a size-limited tmpfs.

No registry is reachable from where agentrl runs, so the image is built locally: ``docker
import`` of a tiny root filesystem (a few directories, ``/etc/passwd``), with the host's ``/usr``
and Python prefix bound read-only at run time. Such an image is a few kilobytes and starts in well
under a second even on the ``vfs`` storage driver.

A container never outlives its supervisor. Its first process is ``cat`` reading the container's
stdin, to which this process stays attached (``stdin_once``): when the supervisor dies, however it
dies, the kernel closes that connection, the daemon closes the stdin, ``cat`` exits and the container
stops (and is removed: ``auto_remove``). ``cat`` runs as a user of its own, out of the program's reach. Every command also runs under ``timeout -s KILL`` set a few
seconds past its limit, so it ends by itself even if nobody kills it. Containers are labelled with
their supervisor (boot id, pid namespace, pid and start time); a ``DockerSandbox`` that starts removes
those whose supervisor is gone, and repairs workspaces a killed supervisor left mounted.

A command that hits the time or output limit has its container killed (the whole process tree,
daemons included); the session starts a fresh container for its next command (the workspace is kept).
Each command starts with an empty ``/tmp`` and ``/dev/shm``, as in the bubblewrap backend.
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
import time
from collections.abc import Iterator, Mapping, Sequence
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
    supervisor_alive,
    supervisor_id,
)
from agentrl.sandboxes.quota import open_workspace, recover_stale

log = logging.getLogger(__name__)

IMAGE = "agentrl-sandbox:hostbind-2"
ETC_FILES = ("ld.so.cache", "alternatives", "localtime")
#: Label every agentrl container carries, and the one naming its supervisor.
LABEL = "agentrl.sandbox"
SUPERVISOR_LABEL = "agentrl.supervisor"
#: User of the container's first process (``cat``, see the module docstring): not the sandbox user, so
#: a program can neither kill it nor ptrace it into living on after its supervisor.
KEEPER_UID = SANDBOX_UID - 1
#: How long past its limit a command may run in the container when its supervisor does not kill it.
DEADLINE_GRACE_S = 5.0


def _supervisor_label() -> str:
    """``<boot id>/<supervisor id>``: the boot id keeps another machine's supervisors apart."""
    return f"{Path('/proc/sys/kernel/random/boot_id').read_text().strip()}/{supervisor_id()}"


def _supervisor_gone(label: str | None) -> bool:
    """True only when the label names a supervisor of this machine that no longer runs."""
    boot, _, ident = (label or "").partition("/")
    if not ident or boot != Path("/proc/sys/kernel/random/boot_id").read_text().strip():
        return False
    return supervisor_alive(ident) is False


def sweep_stale_containers(client: Any) -> list[str]:
    """Remove agentrl containers whose supervisor is gone; returns one line per container."""
    import docker.errors

    removed = []
    for container in client.containers.list(all=True, filters={"label": LABEL}):
        if _supervisor_gone(container.labels.get(SUPERVISOR_LABEL)):
            try:
                container.remove(force=True)
            except docker.errors.NotFound:  # removed meanwhile (auto_remove)
                pass
            removed.append(f"removed container {container.short_id} (its supervisor is gone)")
    return removed


def _rootfs_tar() -> bytes:
    """A minimal root filesystem: empty mount points, host-like top-level symlinks, passwd/group."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add_dir(name: str, mode: int = 0o755) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)

        def add_file(name: str, text: str) -> None:
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))

        for d in ("etc", "usr", "proc", "dev", "sys", "root", "workspace", "data", "var", "run"):
            add_dir(d)
        add_dir("tmp", 0o1777)
        for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
            path = Path("/") / top
            if path.is_symlink():
                info = tarfile.TarInfo(top)
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
                tar.addfile(info)
            elif path.is_dir():
                add_dir(top)
        add_file(
            "etc/passwd",
            f"root:x:0:0:root:/root:/bin/sh\nsandbox:x:{SANDBOX_UID}:{SANDBOX_GID}:sandbox:/tmp:/usr/sbin/nologin\n",
        )
        add_file("etc/group", f"root:x:0:\nsandbox:x:{SANDBOX_GID}:\n")
    return buf.getvalue()


def _client(base_url: str | None, timeout: float = 30.0):
    import docker

    if base_url:
        return docker.DockerClient(base_url=base_url, timeout=timeout)
    return docker.from_env(timeout=timeout)


class DockerSession(Session):
    backend: ClassVar[str] = "docker"

    def __init__(self, sandbox: DockerSandbox, workspace: Path, limits: Limits):
        super().__init__(workspace, limits, sandbox.ro_binds, sandbox.env)
        self.sandbox = sandbox
        self.client = sandbox.client
        self.container: Any = None
        self._lifeline: Any = None  # our attachment to the container's stdin: it lives while we do
        self._oom_seen = 0  # OOM kills of the current container already reported
        self.storage = open_workspace(workspace, limits)
        try:
            self._start()
        except Exception:
            self.close()
            raise

    def _volumes(self) -> dict[str, dict[str, str]]:
        vols = {"/usr": {"bind": "/usr", "mode": "ro"}}
        for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
            path = Path("/") / top
            if path.is_dir() and not path.is_symlink():
                vols[str(path)] = {"bind": str(path), "mode": "ro"}
        for name in ETC_FILES:
            if os.path.exists(f"/etc/{name}"):
                vols[f"/etc/{name}"] = {"bind": f"/etc/{name}", "mode": "ro"}
        for prefix in python_prefixes():
            vols[prefix] = {"bind": prefix, "mode": "ro"}
        for host, inside in self.ro_binds.items():
            vols[host] = {"bind": inside, "mode": "ro"}
        vols[str(self.storage.inner)] = {"bind": WORKSPACE, "mode": "rw"}
        if self.storage.tmp is not None:
            vols[str(self.storage.tmp)] = {"bind": "/tmp", "mode": "rw"}
            vols[str(self.storage.shm)] = {"bind": "/dev/shm", "mode": "rw"}
        return vols

    def _start(self) -> None:
        from docker.types import LogConfig, Ulimit

        lim = self.limits
        self._oom_seen = 0
        tmpfs = {} if self.storage.tmp is not None else {"/tmp": f"size={lim.disk_mb}m,mode=1777"}
        self.container = self.client.containers.create(
            self.sandbox.image,
            ["/usr/bin/cat"],  # ends when our attachment to its stdin closes: see the module docstring
            stdin_open=True,
            auto_remove=True,
            user=f"{KEEPER_UID}:{KEEPER_UID}",  # not the program's user: it cannot signal or ptrace it
            working_dir=WORKSPACE,
            network_mode="none",
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            read_only=True,
            tmpfs=tmpfs,
            volumes=self._volumes(),
            pids_limit=lim.pids,
            mem_limit=f"{lim.memory_mb}m",
            memswap_limit=f"{lim.memory_mb}m",
            nano_cpus=int(lim.cpus * 1e9),
            ulimits=[
                Ulimit(name="fsize", soft=lim.disk_mb << 20, hard=lim.disk_mb << 20),
                Ulimit(name="core", soft=0, hard=0),
                Ulimit(name="nofile", soft=1024, hard=1024),
            ],
            hostname="sandbox",
            environment={},
            labels={LABEL: "1", SUPERVISOR_LABEL: _supervisor_label()},
            log_config=LogConfig(type="none"),
        )
        self._lifeline = self.client.api.attach_socket(self.container.id, params={"stdin": 1, "stream": 1})
        self.container.start()

    def deadline_argv(self, argv: Sequence[str], timeout_s: float) -> list[str]:
        """``argv`` under coreutils ``timeout``: killed a little after its limit even if nobody kills it."""
        return ["/usr/bin/timeout", "-s", "KILL", f"{timeout_s + DEADLINE_GRACE_S:g}", *argv]

    def _remove(self) -> None:
        if self.container is not None:
            try:
                self.container.remove(force=True)
            except Exception:  # already gone (auto_remove, or with the daemon): nothing left to free
                pass
            self.container = None
        if self._lifeline is not None:
            try:
                self._lifeline.close()
            except OSError:
                pass
            self._lifeline = None

    def _oom_kills(self) -> int:
        """The container cgroup's OOM-kill counter, read from inside (works with a remote daemon too).

        Docker's own ``State.OOMKilled`` only notices the container's first process, not an exec'd one.
        """
        try:
            out = self.container.exec_run(
                ["/bin/cat", "/sys/fs/cgroup/memory/memory.oom_control", "/sys/fs/cgroup/memory.events"],
                user=f"{SANDBOX_UID}:{SANDBOX_GID}",
            ).output.decode()
        except Exception:
            return 0
        counts = [int(line.split()[1]) for line in out.splitlines() if line.startswith("oom_kill ")]
        return max(counts, default=0)

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
        argv = self.deadline_argv(as_argv(command), limits.timeout_s)
        full_env = default_env(limits, {**self.env, **(env or {})})
        if self.storage.too_big:
            return RunResult(
                None, "", f"sandbox: the workspace does not fit in its quota ({limits.disk_mb} MB, "
                f"{limits.inodes} inodes); nothing was run\n", 0.0, Reason.DISK_LIMIT, self.backend,
            )  # fmt: skip
        start = time.monotonic()
        api = self.client.api
        try:
            self.storage.clear_tmp()  # the last command's leftovers were killed when it ended
            if self.container is None:
                self._start()
            exec_id = api.exec_create(
                self.container.id, argv, stdout=True, stderr=True, user=f"{SANDBOX_UID}:{SANDBOX_GID}",
                workdir=WORKSPACE, environment=full_env,
            )["Id"]  # fmt: skip
            stream = api.exec_start(exec_id, stream=True, demux=True)
        except Exception as exc:
            return RunResult(
                None, "", f"sandbox error: {exc}", time.monotonic() - start, Reason.ERROR, self.backend
            )

        container_id = self.container.short_id
        collector = StreamCollector(limits.output_bytes)
        # One reader splits the demuxed stream; a second, empty reader keeps the two-stream bookkeeping.
        collector.start_reader("stdout", _demux(stream, collector))
        collector.start_reader("stderr", iter(()))
        outcome = collector.wait(start + limits.timeout_s)
        exit_code: int | None = None
        if outcome == "closed":  # the streams ended; the process may still run (it closed its stdio)
            exit_code, outcome = self._wait_exec(exec_id, start + limits.timeout_s)
        duration = time.monotonic() - start
        if outcome != "closed":
            self._restart_after_kill()
        oom = False
        if outcome == "closed" and exit_code == 137:
            kills = self._oom_kills()
            oom, self._oom_seen = kills > self._oom_seen, kills
        if outcome == "closed":
            self._kill_leftovers()
        full = self._after_run()
        if outcome == "overflow":
            reason = Reason.OUTPUT_LIMIT
        elif oom:
            reason = Reason.OUT_OF_MEMORY
        elif full:
            reason = Reason.DISK_LIMIT
        elif outcome == "timeout":
            reason = Reason.TIMEOUT
        else:
            reason = Reason.FINISHED
        return RunResult(
            exit_code=exit_code,
            stdout=collector.text("stdout"),
            stderr=collector.text("stderr"),
            duration_s=duration,
            reason=reason,
            backend=self.backend,
            truncated=collector.truncated,
            extra={"container": container_id},
        )

    def _wait_exec(self, exec_id: str, deadline: float) -> tuple[int | None, str]:
        """``(exit code, "closed")`` once the exec'd process ended, ``(None, "timeout")`` at the deadline."""
        while True:
            try:
                state = self.client.api.exec_inspect(exec_id)
            except Exception:
                return None, "closed"
            if not state.get("Running"):
                return state.get("ExitCode"), "closed"
            if time.monotonic() >= deadline:
                return None, "timeout"
            time.sleep(0.05)

    def _after_run(self) -> bool:
        """Sweep setuid bits off the workspace; whether the quota is full."""
        try:
            return self.storage.after_run()
        except OSError as exc:  # the workspace is the program's: report, never fail the run over it
            log.warning("sandbox workspace %s: sweep after the run failed: %s", self.workspace, exc)
            return False

    def _restart_after_kill(self) -> None:
        """Time or output limit: kill the container (every process in it); the next exec starts a fresh one."""
        try:
            self.container.kill()
        except Exception:
            pass
        self._remove()

    def _kill_leftovers(self) -> None:
        """Kill background processes a finished command left behind (all but the container's pid 1)."""
        try:
            if len(self.container.top()["Processes"]) > 1:
                self.container.exec_run(["/bin/kill", "-9", "-1"], user=f"{SANDBOX_UID}:{SANDBOX_GID}")
        except Exception:
            pass

    def _close(self) -> None:
        self._remove()
        self.storage.close(copy_back=self.keep_files)


def _demux(
    stream: Iterator[tuple[bytes | None, bytes | None]], collector: StreamCollector
) -> Iterator[bytes]:
    """Feed stderr chunks to the collector directly and yield the stdout ones."""
    for out, err in stream:
        if err:
            collector.feed("stderr", err)
        if out:
            yield out


class DockerSandbox(Sandbox):
    """Sandbox backend on a Docker daemon (``base_url`` or ``DOCKER_HOST``; see the module docstring)."""

    name: ClassVar[str] = "docker"

    def __init__(
        self,
        limits: Limits | None = None,
        *,
        ro_binds: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        base_url: str | None = None,
        image: str = IMAGE,
    ):
        super().__init__(limits, ro_binds=ro_binds, env=env)
        try:
            self.client = _client(base_url)
            self.client.ping()
        except Exception as exc:
            raise SandboxUnavailable(f"no Docker daemon answers: {exc}") from None
        self.image = image
        self.ensure_image()
        for line in self.cleanup_stale():
            log.info("sandbox: %s", line)

    @classmethod
    def availability(cls, base_url: str | None = None, **kwargs: Any) -> tuple[bool, str]:
        try:
            import docker  # noqa: F401
        except ImportError:
            return False, "the docker SDK is not installed (pip install 'agentrl[docker]')"
        try:
            client = _client(base_url, timeout=5)
            client.ping()
            version = client.version().get("Version", "?")
            client.close()
        except Exception as exc:
            return False, f"no Docker daemon answers ({type(exc).__name__}: {str(exc)[:150]})"
        return True, f"works (Docker daemon {version})"

    def ensure_image(self) -> None:
        """Import the minimal root filesystem as ``self.image`` unless it exists."""
        import docker.errors

        try:
            self.client.images.get(self.image)
            return
        except docker.errors.ImageNotFound:
            pass
        repo, _, tag = self.image.partition(":")
        self.client.api.import_image_from_data(_rootfs_tar(), repository=repo, tag=tag or "latest")

    def cleanup_stale(self) -> list[str]:
        """Remove containers whose supervisor is gone, then repair the workspaces they left mounted."""
        return sweep_stale_containers(self.client) + recover_stale()

    def open(self, workspace: str | os.PathLike[str], *, limits: Limits | None = None) -> Session:
        path = Path(workspace).resolve()
        path.mkdir(parents=True, exist_ok=True)
        try:
            return DockerSession(self, path, limits or self.limits)
        except SandboxUnavailable:
            raise
        except Exception as exc:
            raise SandboxUnavailable(f"cannot start a container: {exc}") from exc

    def close(self) -> None:
        self.client.close()
