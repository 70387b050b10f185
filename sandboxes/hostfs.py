"""Host-side file operations on a hostile directory tree (a sandbox workspace).

The program in the sandbox decides what the tree holds: symlinks to host paths, FIFOs that block an
``open``, directories nested deeper than ``PATH_MAX`` or Python's recursion limit, setuid bits, sparse
files that would fill the host disk if copied naively, thousands of hard links to one file. Every
operation here therefore works from directory file descriptors (``openat`` and friends), never follows a
symlink (``O_NOFOLLOW``, ``follow_symlinks=False``), never opens anything but regular files and
directories (checked again with ``fstat`` after the open), bounds its depth (:data:`MAX_DEPTH`) or works
without recursion, clears setuid/setgid/sticky bits, keeps holes as holes and hard links as links.
"""

from __future__ import annotations

import errno
import os
import stat

#: Directories nested deeper than this are not copied (nor swept: quota mounts are ``nosuid``).
MAX_DEPTH = 128
#: Bits never kept on a file the program made.
SPECIAL_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX
O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
O_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def _copy_data(src: int, dst: int, size: int) -> None:
    """Copy a regular file's data region by region (``SEEK_DATA``/``SEEK_HOLE``): holes stay holes."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(src, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole is left
                break
            raise
        end = min(os.lseek(src, start, os.SEEK_HOLE), size)
        os.lseek(dst, start, os.SEEK_SET)
        while start < end:
            sent = os.sendfile(dst, src, start, min(end - start, 1 << 24))
            if sent == 0:  # the file shrank under us
                end = start
                break
            start += sent
        pos = max(end, pos + 1)
    os.ftruncate(dst, size)


class _TreeCopy:
    """Copies a directory's contents into another, handing every entry to ``uid:gid``.

    ``made`` records ``inode -> ctime`` of every file and symlink written (the copy-in keeps it).
    :meth:`sync` takes such a record of the source: an entry whose inode still has its recorded ctime was
    not written, renamed, linked, unlinked or chmod'ed since (each of these sets ctime, which no
    unprivileged program can set back), so the copy the destination already holds is kept as it is.
    """

    def __init__(self, dst_root: int, uid: int, gid: int, unchanged: dict[int, int] | None = None):
        self.dst_root, self.uid, self.gid = dst_root, uid, gid
        self.unchanged = unchanged or {}
        self.made: dict[int, int] = {}
        self.links: dict[int, str] = {}  # source inode -> relative path of its first copy
        self.dropped = 0  # entries left out: special files, too deep

    def copy(self, src: int, dst: int, rel: str = "", depth: int = 0) -> None:
        with os.scandir(src) as entries:
            for entry in entries:
                self._copy_entry(src, dst, entry.name, entry.stat(follow_symlinks=False), rel, depth)

    def sync(self, src: int, dst: int, rel: str = "", depth: int = 0) -> None:
        """Make ``dst`` hold what ``src`` holds, keeping the destination's copies of unchanged entries."""
        with os.scandir(src) as entries:
            wanted = [(e.name, e.stat(follow_symlinks=False)) for e in entries]
        with os.scandir(dst) as entries:
            present = {e.name: e.stat(follow_symlinks=False) for e in entries}
        kept = set()
        for name, st in wanted:
            old = present.get(name)
            if old is None or stat.S_IFMT(old.st_mode) != stat.S_IFMT(st.st_mode):
                continue
            if stat.S_ISDIR(st.st_mode) and depth < MAX_DEPTH:
                self._sync_dir(src, dst, name, st, f"{rel}{name}/", depth)
                kept.add(name)
            elif not stat.S_ISDIR(st.st_mode) and self.unchanged.get(st.st_ino) == st.st_ctime_ns:
                kept.add(name)
        for name, old in present.items():
            if name not in kept:
                _remove_entry(dst, name, stat.S_ISDIR(old.st_mode))
        for name, st in wanted:
            if name not in kept:
                self._copy_entry(src, dst, name, st, rel, depth)

    def _sync_dir(self, src: int, dst: int, name: str, st: os.stat_result, rel: str, depth: int) -> None:
        sub_src = os.open(name, O_DIR, dir_fd=src)
        try:
            sub_dst = os.open(name, O_DIR, dir_fd=dst)
            try:
                self.sync(sub_src, sub_dst, rel, depth + 1)
                os.fchown(sub_dst, self.uid, self.gid)
                os.fchmod(sub_dst, stat.S_IMODE(st.st_mode) & ~SPECIAL_BITS)
            finally:
                os.close(sub_dst)
        finally:
            os.close(sub_src)

    def _record(self, dst: int, name: str) -> None:
        now = os.stat(name, dir_fd=dst, follow_symlinks=False)
        self.made[now.st_ino] = now.st_ctime_ns

    def _copy_entry(self, src: int, dst: int, name: str, st: os.stat_result, rel: str, depth: int) -> None:
        mode = stat.S_IMODE(st.st_mode) & ~SPECIAL_BITS
        path = f"{rel}{name}"
        if stat.S_ISDIR(st.st_mode):
            if depth >= MAX_DEPTH:
                self.dropped += 1
                return
            os.mkdir(name, 0o700, dir_fd=dst)
            sub_src = os.open(name, O_DIR, dir_fd=src)
            try:
                sub_dst = os.open(name, O_DIR, dir_fd=dst)
                try:
                    self.copy(sub_src, sub_dst, f"{path}/", depth + 1)
                    os.fchown(sub_dst, self.uid, self.gid)
                    os.fchmod(sub_dst, mode)
                finally:
                    os.close(sub_dst)
            finally:
                os.close(sub_src)
        elif stat.S_ISREG(st.st_mode):
            if st.st_nlink > 1 and st.st_ino in self.links:
                os.link(
                    self.links[st.st_ino],
                    name,
                    src_dir_fd=self.dst_root,
                    dst_dir_fd=dst,
                    follow_symlinks=False,
                )
                self._record(dst, name)  # a new link changes the inode's ctime
                return
            fd = os.open(name, O_FILE, dir_fd=src)
            try:
                now = os.fstat(fd)
                if not stat.S_ISREG(now.st_mode) or now.st_ino != st.st_ino:  # swapped under us
                    self.dropped += 1
                    return
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                out = os.open(name, flags, 0o600, dir_fd=dst)
                try:
                    _copy_data(fd, out, now.st_size)
                    os.fchown(out, self.uid, self.gid)
                    os.fchmod(out, mode)
                    os.utime(out, ns=(now.st_atime_ns, now.st_mtime_ns))
                    made = os.fstat(out)
                    self.made[made.st_ino] = made.st_ctime_ns
                finally:
                    os.close(out)
            finally:
                os.close(fd)
            if st.st_nlink > 1:
                self.links[st.st_ino] = path
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(name, dir_fd=src), name, dir_fd=dst)
            os.chown(name, self.uid, self.gid, dir_fd=dst, follow_symlinks=False)
            self._record(dst, name)
        else:  # FIFO, socket, device: nothing a workspace needs, and nothing the host may open
            self.dropped += 1


def _remove_entry(dir_fd: int, name: str, is_dir: bool) -> None:
    if not is_dir:
        os.unlink(name, dir_fd=dir_fd)
        return
    sub = os.open(name, O_DIR, dir_fd=dir_fd)
    try:
        clear_dir(sub)
    finally:
        os.close(sub)
    os.rmdir(name, dir_fd=dir_fd)


def copy_tree(src: int, dst: int, uid: int, gid: int) -> dict[int, int]:
    """Copy the contents of directory ``src`` into the empty directory ``dst`` (both fds) as ``uid:gid``.

    Special files and directories deeper than :data:`MAX_DEPTH` are left out. Returns the record of
    what was written (``inode -> ctime`` in ``dst``) for a later :func:`sync_tree` back.
    """
    tree = _TreeCopy(dst, uid, gid)
    tree.copy(src, dst)
    return tree.made


def sync_tree(src: int, dst: int, uid: int, gid: int, unchanged: dict[int, int]) -> None:
    """Make directory ``dst`` hold what ``src`` holds, as ``uid:gid``; entries of ``src`` still as the
    record ``unchanged`` (from :func:`copy_tree`) says are kept as ``dst`` already has them."""
    _TreeCopy(dst, uid, gid, unchanged).sync(src, dst)


def clear_dir(fd: int) -> None:
    """Remove everything inside directory ``fd``, however deep; symlinks are removed, never followed.

    The tree must be quiescent (no process of the sandbox left): it climbs back with ``..``, which holds
    only while nobody moves directories. One descriptor is open at a time, and no recursion: a program
    can nest directories as deep as its inode quota allows.
    """
    cur = os.dup(fd)
    stack: list[tuple[str, list[str]]] = []  # (name of the directory we are in, its subdirectories left)
    pending = _unlink_files(cur)
    try:
        while True:
            if pending:
                name = pending.pop()
                sub = os.open(name, O_DIR, dir_fd=cur)
                os.close(cur)
                cur = sub
                stack.append((name, pending))
                pending = _unlink_files(cur)
                continue
            if not stack:
                return
            name, pending = stack.pop()
            parent = os.open("..", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=cur)
            os.close(cur)
            cur = parent
            os.rmdir(name, dir_fd=cur)
    finally:
        os.close(cur)


def _unlink_files(fd: int) -> list[str]:
    """Unlink every non-directory in ``fd``; returns the names of its subdirectories."""
    with os.scandir(fd) as entries:
        found = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
    for name, is_dir in found:
        if not is_dir:
            os.unlink(name, dir_fd=fd)
    return [name for name, is_dir in found if is_dir]


def clear_special_bits(fd: int, depth: int = 0) -> int:
    """Clear setuid/setgid/sticky bits under directory ``fd``; returns how many entries had them."""
    cleared = 0
    with os.scandir(fd) as entries:
        found = [(e.name, e.stat(follow_symlinks=False)) for e in entries]
    for name, st in found:
        is_dir = stat.S_ISDIR(st.st_mode)
        if not (is_dir or stat.S_ISREG(st.st_mode)):
            continue
        if is_dir and depth >= MAX_DEPTH:
            continue
        if not st.st_mode & SPECIAL_BITS and not is_dir:
            continue
        try:
            sub = os.open(name, O_DIR if is_dir else O_FILE, dir_fd=fd)
        except OSError:  # gone or swapped for something else meanwhile
            continue
        try:
            now = os.fstat(sub)
            if now.st_mode & SPECIAL_BITS:
                os.fchmod(sub, stat.S_IMODE(now.st_mode) & ~SPECIAL_BITS)
                cleared += 1
            if is_dir and stat.S_ISDIR(now.st_mode):
                cleared += clear_special_bits(sub, depth + 1)
        finally:
            os.close(sub)
    return cleared
