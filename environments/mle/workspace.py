"""Host-side file operations in a workspace that a sandboxed program controls.

Between two attempts the previous program may have left anything under any name in the
workspace: a symbolic link to a host file, a FIFO (opening it for reading blocks), a directory, a
hard link, a tree a thousand levels deep. The host runs as root, so following a link there would
write or read any host file. Every operation here therefore works on the directory entry itself
and never follows it:

* :func:`remove_entry` deletes whatever an entry is (a directory is first renamed aside, so the
  name is free even when its tree cannot be removed at once);
* :func:`write_new_file` removes the entry, then creates a new regular file with ``O_CREAT |
  O_EXCL | O_NOFOLLOW`` (no link is followed, no existing file or FIFO is opened);
* :func:`read_regular_file` opens with ``O_NOFOLLOW | O_NONBLOCK`` (a FIFO opens at once and a
  link fails), checks with ``fstat`` that it is a regular file, and reads at most a given size;
* :func:`remove_tree` removes a whole workspace, falling back to ``rm -rf`` for trees too deep
  for :func:`shutil.rmtree`.

All paths are resolved relative to a descriptor of the workspace directory (``dir_fd``). No
sandboxed process runs while the host does these operations (the sandbox kills the whole process
tree at the end of each run), so there is no race to win.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import subprocess
from pathlib import Path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC


class UnsafeEntry(Exception):
    """A workspace entry is not a regular file the host may read (the message says what it is)."""


class TooLarge(UnsafeEntry):
    """A regular file larger than the caller allows (``size`` is None when it grew while being read)."""

    def __init__(self, size: int | None, limit: int):
        self.size, self.limit = size, limit
        super().__init__(
            f"has {'more than ' if size is None else ''}{size or limit:,} bytes, at most {limit:,}"
        )


def kind_of(mode: int) -> str:
    """A short name for what a file mode describes ("a directory", "a FIFO"...)."""
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


def _check_name(name: str) -> None:
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"not a plain file name: {name!r}")


def _open_dir(workspace: str | os.PathLike[str]) -> int:
    return os.open(workspace, _DIR_FLAGS)


def remove_entry(workspace: str | os.PathLike[str], name: str) -> None:
    """Delete the entry ``name`` of ``workspace`` whatever it is; a link is removed, never followed.

    A directory is renamed to a hidden junk name first and then removed; when its tree cannot be
    removed (too deep, say) it stays under that name, and ``name`` is free all the same.
    """
    _check_name(name)
    dir_fd = _open_dir(workspace)
    try:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=dir_fd)
            return
        junk = f".agentrl-removed-{secrets.token_hex(6)}"
        os.rename(name, junk, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        try:
            shutil.rmtree(junk, dir_fd=dir_fd)
        except (OSError, RecursionError):
            _rm_rf(Path(workspace) / junk)
    finally:
        os.close(dir_fd)


def write_new_file(workspace: str | os.PathLike[str], name: str, data: bytes, mode: int = 0o644) -> None:
    """Replace whatever ``name`` is in ``workspace`` by a new regular file holding ``data``."""
    remove_entry(workspace, name)
    dir_fd = _open_dir(workspace)
    try:
        fd = os.open(name, _CREATE_FLAGS, mode, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(fd, mode)  # not narrowed by the umask: the sandboxed user may be another uid
        f.write(data)


def read_regular_file(path: str | os.PathLike[str], max_bytes: int) -> bytes | None:
    """The contents of ``path`` if it is a regular file of at most ``max_bytes`` bytes.

    Returns None when it does not exist. Raises :class:`UnsafeEntry` when it is a symbolic link, a
    FIFO, a directory, a device or a socket (none of them is opened in a way that blocks or follows),
    or :class:`TooLarge` when it is larger than ``max_bytes``; at most ``max_bytes + 1`` bytes are ever read.
    """
    path = Path(path)
    dir_fd = _open_dir(path.parent)
    try:
        try:
            fd = os.open(path.name, _READ_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            try:
                st = os.stat(path.name, dir_fd=dir_fd, follow_symlinks=False)
            except OSError:
                raise UnsafeEntry(f"cannot be opened ({exc.strerror})") from None
            raise UnsafeEntry(f"is {kind_of(st.st_mode)}, not a file") from None
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeEntry(f"is {kind_of(st.st_mode)}, not a file")
        if st.st_size > max_bytes:
            raise TooLarge(st.st_size, max_bytes)
        chunks: list[bytes] = []
        size = 0
        while size <= max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > max_bytes:
            raise TooLarge(None, max_bytes)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _rm_rf(path: Path) -> None:
    """``rm -rf`` (iterative, never follows links) for trees :func:`shutil.rmtree` cannot take."""
    try:
        subprocess.run(
            ["rm", "-rf", "--one-file-system", "--", str(path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=300,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        pass


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Remove a workspace and everything in it, whatever the program left there. Never raises."""
    path = Path(path)
    try:
        if path.is_symlink() or not path.is_dir():
            path.unlink(missing_ok=True)
            return
        shutil.rmtree(path)
    except (OSError, RecursionError):
        _rm_rf(path)
