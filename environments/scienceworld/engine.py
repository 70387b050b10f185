"""One ScienceWorld JVM, driven directly over py4j.

ScienceWorld's own ``ScienceWorldEnv`` starts an uncapped JVM plus a py4j callback server it never
uses, and its ``step`` makes four extra round trips (look, inventory, task description, every valid
action) on every call. :class:`Engine` keeps only what an episode needs: a JVM whose heap is capped,
started with ``--die-on-broken-pipe`` so it exits when this process goes away (even on SIGKILL: its
stdin pipe closes), an authenticated gateway bound to 127.0.0.1, and the ``PythonInterface`` object
that every call goes to. ``close`` ends the process and reaps it; a finalizer does the same if the
owner forgets.
"""

from __future__ import annotations

import collections
import re
import subprocess
import weakref
from typing import Any

#: ``-Xmx`` values we accept: a number with an optional k/m/g unit.
HEAP_PATTERN = re.compile(r"^[1-9][0-9]*[kKmMgG]?$")


class EngineDied(RuntimeError):
    """The JVM behind an engine is gone (killed, crashed, out of memory) or stopped answering."""


def _stop_process(proc: subprocess.Popen, gateway: Any) -> None:
    """End the JVM, reap it, then drop the gateway's sockets (idempotent).

    The process goes first: a polite gateway shutdown would wait on a hung JVM for the full read
    timeout, while closing its stdin ends a healthy one at once (``--die-on-broken-pipe``) and
    SIGKILL ends any other.
    """
    if proc.poll() is None:
        try:
            proc.stdin.close()
        except Exception:
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    else:
        proc.wait()
    client = gateway._gateway_client
    client.close()  # drop the sockets (no callback server was started)
    # From now on py4j must not dial the dead JVM: not for calls (they raise at once instead of
    # retrying) and not for the "forget object" messages its proxies send when garbage collected
    # (each would log a connection-refused traceback, typically at interpreter exit).
    client.is_connected = False


class Engine:
    """A running ScienceWorld JVM and its ``PythonInterface`` (``self.server``).

    ``heap`` is the JVM's ``-Xmx`` (``"1g"``); ``timeout`` bounds every call in seconds (gold-path
    generation for the longest tasks takes ~15 s on 2 cores), after which the JVM is considered hung.
    """

    def __init__(self, *, heap: str = "1g", timeout: float = 300.0):
        from py4j.java_gateway import GatewayParameters, JavaGateway, launch_gateway
        from scienceworld.constants import BASEPATH, JAR_PATH

        self.heap = self.check_heap(heap)
        self._stderr: collections.deque[str] = collections.deque(maxlen=20)
        import shutil

        if shutil.which("java") is None:
            raise RuntimeError("ScienceWorld needs a Java runtime (11 or newer) on PATH; none was found")
        port, token, proc = launch_gateway(
            classpath=JAR_PATH,
            javaopts=[f"-Xmx{self.heap}", "-XX:+UseSerialGC"],
            die_on_exit=True,
            enable_auth=True,
            redirect_stderr=self._stderr,
            cwd=BASEPATH,
            return_proc=True,
        )
        self.process: subprocess.Popen = proc
        self._gateway = JavaGateway(
            gateway_parameters=GatewayParameters(
                address="127.0.0.1", port=port, auth_token=token, read_timeout=timeout
            ),
            java_process=proc,
        )
        self._finalizer = weakref.finalize(self, _stop_process, proc, self._gateway)
        try:
            self.server = self._gateway.jvm.scienceworld.runtime.pythonapi.PythonInterface()
            self._join = self._gateway.jvm.java.lang.String.join
        except Exception:
            self.close()
            raise

    @staticmethod
    def check_heap(heap: str) -> str:
        """Validate a ``-Xmx`` size (``"1g"``, ``"512m"``) and return it; ``ValueError`` otherwise."""
        if not HEAP_PATTERN.match(str(heap)):
            raise ValueError(f"jvm_heap must look like '1g', '512m' or '2048m', got {heap!r}")
        return str(heap)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def why_dead(self) -> str:
        """A one-line reason for a dead or hung JVM (exit code and its last stderr line)."""
        try:  # not poll(): while py4j's watcher thread is in wait(), poll() says None for a dead JVM
            code = self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            code = None
        state = "stopped answering" if code is None else f"exited with code {code}"
        last = next((line.strip() for line in reversed(self._stderr) if line.strip()), "")
        return f"the ScienceWorld JVM (pid {self.pid}) {state}" + (f": {last}" if last else "")

    def lines(self, java_list: Any) -> list[str]:
        """A Java ``List<String>`` as a Python list in one round trip (iterating costs one per item).

        Items never contain newlines (actions and task names are single lines).
        """
        text = self._join("\n", java_list)
        return text.split("\n") if text else []

    def close(self) -> None:
        """End the JVM and wait for it; safe to call more than once."""
        self._finalizer()
