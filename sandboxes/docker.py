"""Docker backend, through the ``docker`` SDK.

A session is one container, kept alive (``sleep infinity``) while commands are ``exec``'d into it:
network disabled (``network_mode="none"``: only the container's own loopback), every capability
dropped, ``no-new-privileges``, read-only root, uid/gid 65534, limits on pids, memory (swap
included), CPU, file size (``RLIMIT_FSIZE``) and a size-limited ``/tmp`` tmpfs. The workspace is
bind-mounted read-write at ``/workspace``.

No registry is reachable from where agentrl runs, so the image is built locally: ``docker
import`` of a tiny root filesystem (a few directories, ``/etc/passwd``), with the host's ``/usr``
and Python prefix bound read-only at run time. Such an image is a few kilobytes and starts in well
under a second even on the ``vfs`` storage driver.

A command that hits the time or output limit has its container killed (the whole process tree,
daemons included); the session starts a fresh container for its next command (the workspace is
kept, ``/tmp`` is not). The workspace is handed to uid 65534 while a session is open and given
back to its owner on close.
"""

from __future__ import annotations

import io
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
)

IMAGE = "agentrl-sandbox:hostbind-1"
ETC_FILES = ("ld.so.cache", "alternatives", "localtime")


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
            f"root:x:0:0:root:/root:/bin/sh\nnobody:x:{SANDBOX_UID}:{SANDBOX_GID}:nobody:/tmp:/usr/sbin/nologin\n",
        )
        add_file("etc/group", f"root:x:0:\nnogroup:x:{SANDBOX_GID}:\n")
    return buf.getvalue()


def _client(base_url: str | None, timeout: float = 30.0):
    import docker

    if base_url:
        return docker.DockerClient(base_url=base_url, timeout=timeout)
    return docker.from_env(timeout=timeout)


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)
            except FileNotFoundError:
                pass


class DockerSession(Session):
    backend: ClassVar[str] = "docker"

    def __init__(self, sandbox: DockerSandbox, workspace: Path, limits: Limits):
        super().__init__(workspace, limits, sandbox.ro_binds, sandbox.env)
        self.sandbox = sandbox
        self.client = sandbox.client
        self.container: Any = None
        self._oom_seen = 0  # OOM kills of the current container already reported
        st = workspace.stat()
        self._owner = (st.st_uid, st.st_gid)
        if os.geteuid() == 0:
            _chown_tree(workspace, SANDBOX_UID, SANDBOX_GID)
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
        vols[str(self.workspace)] = {"bind": WORKSPACE, "mode": "rw"}
        return vols

    def _start(self) -> None:
        from docker.types import LogConfig, Ulimit

        lim = self.limits
        self._oom_seen = 0
        self.container = self.client.containers.run(
            self.sandbox.image,
            ["/usr/bin/sleep", "infinity"],
            detach=True,
            user=f"{SANDBOX_UID}:{SANDBOX_GID}",
            working_dir=WORKSPACE,
            network_mode="none",
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            read_only=True,
            tmpfs={"/tmp": f"size={lim.disk_mb}m,mode=1777"},
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
            labels={"agentrl.sandbox": "1"},
            log_config=LogConfig(type="none"),
        )

    def _remove(self) -> None:
        if self.container is not None:
            try:
                self.container.remove(force=True)
            except Exception:  # already gone with the daemon: nothing left to free
                pass
            self.container = None

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
        argv = as_argv(command)
        full_env = default_env(limits, {**self.env, **(env or {})})
        start = time.monotonic()
        api = self.client.api
        try:
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
        reason = {
            "overflow": Reason.OUTPUT_LIMIT,
            "timeout": Reason.TIMEOUT,
        }.get(outcome, Reason.OUT_OF_MEMORY if oom else Reason.FINISHED)
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
        if os.geteuid() == 0 and self.workspace.exists():
            _chown_tree(self.workspace, *self._owner)


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
