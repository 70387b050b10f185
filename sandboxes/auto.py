"""Backend selection: ``auto`` is Docker when a daemon answers, else bubblewrap."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agentrl.sandboxes.base import Limits, Sandbox, SandboxUnavailable

BACKENDS: tuple[str, ...] = ("docker", "bubblewrap")


def _backend_class(name: str) -> type[Sandbox]:
    if name == "docker":
        from agentrl.sandboxes.docker import DockerSandbox

        return DockerSandbox
    if name in ("bubblewrap", "bwrap"):
        from agentrl.sandboxes.bubblewrap import BubblewrapSandbox

        return BubblewrapSandbox
    raise ValueError(f"unknown sandbox backend {name!r}; choose one of auto, {', '.join(BACKENDS)}")


def check_backends(docker_url: str | None = None) -> dict[str, tuple[bool, str]]:
    """``{backend: (works, why)}`` for every backend, probed on this machine."""
    out: dict[str, tuple[bool, str]] = {}
    for name in BACKENDS:
        kwargs = {"base_url": docker_url} if name == "docker" else {}
        try:
            out[name] = _backend_class(name).availability(**kwargs)
        except Exception as exc:  # a probe that crashes means the backend does not work here
            out[name] = (False, f"probe failed: {type(exc).__name__}: {exc}")
    return out


def get_sandbox(
    backend: str = "auto",
    limits: Limits | None = None,
    *,
    ro_binds: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    docker_url: str | None = None,
) -> Sandbox:
    """Make a sandbox of ``backend`` (``auto``, ``docker`` or ``bubblewrap``).

    ``auto`` takes Docker when a daemon answers and bubblewrap otherwise; it raises
    :class:`SandboxUnavailable` with both reasons when neither works.
    """
    kwargs: dict[str, Any] = {"ro_binds": ro_binds, "env": env}
    if backend != "auto":
        cls = _backend_class(backend)
        if cls.__name__ == "DockerSandbox":
            kwargs["base_url"] = docker_url
        else:
            works, why = cls.availability()
            if not works:
                raise SandboxUnavailable(f"{backend}: {why}")
        return cls(limits, **kwargs)
    reasons = []
    for name in BACKENDS:
        cls = _backend_class(name)
        extra = {"base_url": docker_url} if name == "docker" else {}
        works, why = cls.availability(**extra)
        if works:
            return cls(limits, **kwargs, **extra)
        reasons.append(f"{name}: {why}")
    raise SandboxUnavailable("no sandbox backend works here (" + "; ".join(reasons) + ")")


def cleanup_stale(docker_url: str | None = None) -> list[str]:
    """Repair what supervisors killed mid-run left behind; returns one line per repair.

    Removes agentrl containers whose supervisor is gone (when a Docker daemon answers at ``docker_url``,
    ``DOCKER_HOST`` or the local socket), gives workspaces left mounted back to their owners with the
    program's files, and removes orphaned cgroups. Every backend does this when it starts; this is the
    same, on demand (``agentrl sandbox cleanup``). Live sandboxes of other processes are left alone.
    """
    from agentrl.sandboxes.bubblewrap import sweep_stale_cgroups
    from agentrl.sandboxes.quota import recover_stale

    done: list[str] = []
    try:
        from agentrl.sandboxes.docker import DockerSandbox, _client, sweep_stale_containers

        if DockerSandbox.availability(base_url=docker_url)[0]:
            client = _client(docker_url)
            try:
                done += sweep_stale_containers(client)
            finally:
                client.close()
    except ImportError:  # no docker SDK: no containers of ours either
        pass
    return done + recover_stale() + sweep_stale_cgroups()
