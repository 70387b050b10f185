"""Milestones that only count when the instrumented statement ran (the host side of the scheme).

The instrumenter (:mod:`.instrument`) adds ``print('@@milestone <token> <name>@@')`` statements,
and only those (its syntax-tree check); the token is per attempt and never leaves the host. The
host then compiles the program with each of *those* statements (found by the token, so a
look-alike print the agent wrote stays a print) turned into a call
``<name with a space>("agentrl.milestone", "<milestone>")``, a global that source code cannot
spell, bound at run time to :func:`sys.audit`. The compiled code holds no secret.

In the sandbox the loader (:mod:`._loader`, passed on the command line) reads the per-run key
and the code from a payload file and deletes it before the program exists, makes the process
non-dumpable, and writes ``@@agentrl-milestone <name> <HMAC-SHA256(key, name)[:32]>@@`` for a
milestone only after a tagger thread has checked, on the calling thread's own stack, that the call
came from a compiled milestone call site. The host counts a milestone when its tag is in stdout and
strips every marker before the agent sees the output.

Why printing cannot forge one: a tag is 128 bits of an HMAC under a key that is fresh per attempt
and never in a file, code object, argument or environment variable the program can read, so
printing strings (the code's constants, guesses, markers of earlier attempts) gives nothing. The
only holder of the key is the tagger thread. No Python reference leads to it: it was started with
``_thread`` (no ``Thread`` object), the audit hooks that talk to it hold nothing secret (a frame of
theirs caught by a signal handler or a traceback shows nothing), and what could find it anyway is
refused by the loader's audit hook: ``gc`` scans, ``sys._current_frames``, tracing, further audit
hooks, ctypes' audited raw reads; ``/proc/<pid>/mem`` is unreadable (Landlock, and the process is
non-dumpable, so its children cannot read it either). Calling the emitter from a dead branch, a
loop, a monkeypatched ``print`` or ``sys.audit`` directly yields nothing, because the tagger takes
the milestone from the call site it finds on the calling thread's stack (code object identity and
instruction offset), not from what the caller says; a trace function that could jump into a dead
branch cannot be installed. What stays possible is a genuine execution of the instrumented
statement, which is what a milestone means. The limit: Python has no isolation inside one
process, so a program that gets a raw memory primitive the hook does not see (a ctypes pointer
read such as ``c_char_p(address).value``, numpy strides over foreign memory, a bug in a C
extension) could find the tagger's HMAC state in the heap and forge a tag; that takes an exploit
written for this loader, not printing. Tested in ``tests/test_mle_attacks.py``.
"""

from __future__ import annotations

import ast
import hashlib
import hmac
import marshal
import re
import secrets
from pathlib import Path
from types import CodeType

from agentrl.environments.mle._loader import LOADER_EXIT
from agentrl.environments.mle.instrument import MILESTONES, is_milestone_print

#: The payload file the loader reads and deletes, in the workspace.
RUN_FILE = ".run.bin"
PAYLOAD_MAGIC = b"AGENTRL1"
KEY_BYTES = 32
#: The global the compiled milestone statements call (not a Python identifier: no source can name it).
EMITTER = "agentrl milestone"
#: The audit event a milestone call raises.
EVENT = "agentrl.milestone"
#: The loader's source, run as ``python -I -u -c LOADER``.
LOADER = (Path(__file__).with_name("_loader.py")).read_text()

_MARKER_RE = re.compile(r"@@agentrl-milestone ([a-z_]{1,40}) ([0-9a-f]{32})@@\n?")
#: Any marker-like text, forged or not, is removed from what the agent is shown (old format too).
_ANY_MARKER_RE = re.compile(r"@@(?:agentrl-)?milestone [^\n@]{0,120}@@\n?")


def new_key() -> bytes:
    """A fresh per-attempt key."""
    return secrets.token_bytes(KEY_BYTES)


def tag(key: bytes, name: str) -> str:
    """The tag the loader writes for milestone ``name`` under ``key``."""
    return hmac.new(key, name.encode(), hashlib.sha256).hexdigest()[:32]


class _ToEmitterCalls(ast.NodeTransformer):
    """Turns the instrumenter's milestone prints (those carrying ``token``) into emitter calls."""

    def __init__(self, token: str):
        self.token = token

    def generic_visit(self, node: ast.AST) -> ast.AST:
        for field, value in ast.iter_fields(node):
            if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
                setattr(node, field, [self._convert(s) for s in value])
        return super().generic_visit(node)

    def _convert(self, stmt: ast.stmt) -> ast.stmt:
        if not is_milestone_print(stmt, self.token):
            return stmt
        name = _milestone_name(stmt)
        call = ast.Call(ast.Name(EMITTER, ast.Load()), [ast.Constant(EVENT), ast.Constant(name)], [])
        new = ast.Expr(call)
        for sub in ast.walk(new):
            ast.copy_location(sub, stmt)
        return new


def _milestone_name(stmt: ast.stmt) -> str:
    text = stmt.value.args[0].value  # type: ignore[attr-defined]
    return text.strip("@").split()[-1]


def compile_program(tree: ast.Module, token: str, filename: str = "solution.py") -> CodeType:
    """Compile an instrumented program (its tree is changed in place) for the loader.

    Raises ``SyntaxError`` for what parses but does not compile (``return`` outside a function),
    and ``RecursionError``/``MemoryError`` for trees too deep to compile.
    """
    tree = _ToEmitterCalls(token).visit(tree)
    return compile(tree, filename, "exec", dont_inherit=True)


def payload(key: bytes, code: CodeType) -> bytes:
    """The payload file's bytes: magic, key, marshalled code."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"a run key has {KEY_BYTES} bytes")
    return PAYLOAD_MAGIC + key + marshal.dumps(code)


def loader_command() -> list[str]:
    """The sandboxed command of one attempt (cwd is the workspace)."""
    return ["python", "-I", "-u", "-c", LOADER]


def milestones_seen(stdout: str, key: bytes) -> list[str]:
    """Milestones whose tag under ``key`` is in ``stdout``, in the order of :data:`MILESTONES`."""
    found = {(m.group(1), m.group(2)) for m in _MARKER_RE.finditer(stdout)}
    return [name for name in MILESTONES if (name, tag(key, name)) in found]


def strip_markers(stdout: str) -> str:
    """The output without milestone markers (genuine or not): the agent never sees a tag."""
    return _ANY_MARKER_RE.sub("", stdout)


def loader_failure(exit_code: int | None, stderr: str) -> str | None:
    """The loader's own error message when it could not run the program, else None."""
    if exit_code == LOADER_EXIT and stderr.startswith("agentrl loader: "):
        return stderr.splitlines()[0][len("agentrl loader: ") :]
    return None
