"""A private Docker daemon for tests and benchmarks, when none answers already.

``docker_daemon()`` yields the address of a daemon: ``$DOCKER_HOST`` or the local socket when one
answers, else a ``dockerd`` started here with its own data root, socket and no networking set-up
(``--iptables=false --bridge=none``, the ``vfs`` storage driver that works inside containers),
stopped and removed on exit. It raises :class:`DockerUnavailable` with the reason when no daemon
can be had, so callers can skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager


class DockerUnavailable(RuntimeError):
    """No Docker daemon answers and none could be started here."""


def _answers(base_url: str | None) -> bool:
    from agentrl.sandboxes.docker import DockerSandbox

    return DockerSandbox.availability(base_url=base_url)[0]


@contextmanager
def docker_daemon(start_timeout_s: float = 60.0) -> Iterator[str]:
    """Yield a Docker daemon address (``unix://...``), starting a private ``dockerd`` if needed."""
    try:
        import docker  # noqa: F401
    except ImportError:
        raise DockerUnavailable("the docker SDK is not installed (pip install 'agentrl[docker]')") from None
    existing = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if _answers(existing):
        yield existing
        return
    if shutil.which("dockerd") is None:
        raise DockerUnavailable(
            "no Docker daemon answers and dockerd is not installed (apt-get install docker.io)"
        )
    if os.geteuid() != 0:
        raise DockerUnavailable("no Docker daemon answers and starting one needs root")
    root = tempfile.mkdtemp(prefix="agentrl-dockerd-")
    sock = f"unix://{root}/docker.sock"
    log = open(os.path.join(root, "dockerd.log"), "wb")
    proc = subprocess.Popen(
        [
            "dockerd", "--storage-driver=vfs", f"--data-root={root}/data", f"--exec-root={root}/exec",
            f"--pidfile={root}/docker.pid", "-H", sock, "--iptables=false", "--ip6tables=false",
            "--bridge=none", "--ip-forward=false", "--ip-masq=false",
        ],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + start_timeout_s
        while not _answers(sock):
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                tail = open(os.path.join(root, "dockerd.log"), errors="replace").read()[-300:]
                raise DockerUnavailable(f"dockerd did not start: {tail.strip()}")
            time.sleep(0.25)
        yield sock
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
        subprocess.run(["umount", "-R", f"{root}/exec"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
