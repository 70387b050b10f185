"""A seccomp filter that refuses new user namespaces and the kernel keyring (bubblewrap started by root).

Why: bubblewrap started by root runs the program as the unprivileged host user
:data:`~agentrl.sandboxes.base.SANDBOX_UID` without a user namespace of its own, so its
``--disable-userns`` (which needs one) cannot be used. Inside a new user namespace a program holds every
capability over it, which opens a large part of the kernel to it; Docker's default profile refuses the
same calls. The filter answers ``EPERM`` to ``unshare``/``clone`` with ``CLONE_NEWUSER`` and
``ENOSYS`` to ``clone3`` (whose flags a filter cannot read; the C library then falls back to
``clone``), for the native and the 32-bit compatibility ABI; x32 calls are refused. It also refuses
``add_key``/``request_key``/``keyctl``, as Docker's profile does: every sandbox runs as the same user,
whose keyring would otherwise outlive a run and carry data from one sandbox to the next.

:func:`deny_user_namespaces` returns the raw program (``struct sock_filter`` array) that bwrap's
``--seccomp FD`` reads, or None on an architecture this table does not know.
"""

from __future__ import annotations

import errno
import platform
import struct

CLONE_NEWUSER = 0x10000000

# (audit arch, unshare, clone, clone3, (add_key, request_key, keyctl)) per ABI; the native one first.
_ABIS: dict[str, list[tuple[int, int, int, int, tuple[int, ...]]]] = {
    "x86_64": [(0xC000003E, 272, 56, 435, (248, 249, 250)), (0x40000003, 310, 120, 435, (286, 287, 288))],
    "aarch64": [(0xC00000B7, 97, 220, 435, (217, 218, 219)), (0x40000028, 337, 120, 435, (309, 310, 311))],
}
_X32_BIT = 0x40000000

_LD_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_OFF_NR, _OFF_ARCH, _OFF_ARG0 = 0, 4, 16  # struct seccomp_data, little-endian low word of args[0]
_ALLOW = 0x7FFF0000
_ERRNO = 0x00050000


def _assemble(program: list[tuple]) -> bytes:
    """``("label", name)`` marks a place; jumps name their targets; offsets are resolved here."""
    places, code = {}, []
    for op in program:
        if op[0] == "label":
            places[op[1]] = len(code)
        else:
            code.append(op)
    out = b""
    for pc, (kind, k, *targets) in enumerate(code):
        if kind in (_JEQ, _JGE, _JSET):
            jt, jf = (places[t] - pc - 1 if isinstance(t, str) else t for t in targets)
            if not (0 <= jt < 256 and 0 <= jf < 256):
                raise ValueError("seccomp jump out of range")
        else:
            jt = jf = 0
        out += struct.pack("<HBBI", kind, jt, jf, k)
    return out


def deny_user_namespaces(machine: str | None = None) -> bytes | None:
    """The filter program for ``machine`` (default: this one), or None when it is not supported."""
    machine = machine or platform.machine()
    abis = _ABIS.get(machine)
    if abis is None:
        return None
    deny, enosys = _ERRNO | errno.EPERM, _ERRNO | errno.ENOSYS
    prog: list[tuple] = [(_LD_ABS, _OFF_ARCH)]
    for i, (arch, *_) in enumerate(abis):
        prog.append((_JEQ, arch, f"abi{i}", 0))
    prog.append((_RET, deny))  # an ABI the table does not know: refuse everything
    for i, (_, unshare, clone, clone3, keyring) in enumerate(abis):
        prog += [("label", f"abi{i}"), (_LD_ABS, _OFF_NR)]
        if i == 0 and machine == "x86_64":
            prog.append((_JGE, _X32_BIT, "deny", 0))
        prog += [(_JEQ, unshare, "flags", 0), (_JEQ, clone, "flags", 0), (_JEQ, clone3, "enosys", 0)]
        prog += [(_JEQ, nr, "deny", 0) for nr in keyring]
        prog.append((_RET, _ALLOW))
    prog += [
        ("label", "flags"),
        (_LD_ABS, _OFF_ARG0),
        (_JSET, CLONE_NEWUSER, "deny", 0),
        (_RET, _ALLOW),
        ("label", "deny"),
        (_RET, deny),
        ("label", "enosys"),
        (_RET, enosys),
    ]
    return _assemble(prog)
