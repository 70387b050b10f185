"""Workspace storage with a size and inode quota per session, and its repair after a killed supervisor.

Why: a program could otherwise fill the host's disk or inode table through its workspace (there was no
total limit: four 450 MB files fitted under ``disk_mb=512``, and 561,000 small files in 30 s).

How (root only, both backends): a session mounts one ``tmpfs`` (``size=disk_mb``, ``nr_inodes``,
``nosuid``, ``nodev``) at ``STATE_ROOT/<session>/fs`` holding three directories, ``workspace`` (the
sandbox's ``/workspace``), ``tmp`` (its ``/tmp``) and ``shm`` (its ``/dev/shm``, which POSIX semaphores
and so Python's ``multiprocessing`` need). The host directory's contents are copied in and
``fs/workspace`` is bind-mounted over the host directory, so the host sees the program's files at the
same path while the session is open. :meth:`QuotaWorkspace.close` copies the contents back into the
host directory (underneath the bind, so nobody sees a half-copied workspace) and takes the mounts away.
A tmpfs was chosen over a loop-mounted ext4 image (measured here: ~80 ms of ``mkfs`` + loop set-up per
session against well under a millisecond, exact inode counts, no loop devices to run out of); its pages
are memory, charged to the sandbox that writes them, so files also count against ``memory_mb``.

The workspace is hostile: the copies in and out are :mod:`.hostfs`'s (from directory descriptors,
nothing followed, FIFOs and devices dropped, setuid/setgid bits cleared, holes and hard links kept, so
nothing comes back bigger on the host disk than it was in the quota); files come back owned by the
host directory's owner, and only what changed is copied back.

A supervisor killed before ``close`` leaves its mounts behind. Each session holds an ``flock`` on its
lock file for its lifetime (the kernel drops it when the process dies, however it dies), so
:func:`recover_stale` (run when a backend starts, and by ``agentrl sandbox cleanup``) knows which
sessions are orphans and finishes their ``close``.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import logging
import os
import secrets
import stat
import time
from pathlib import Path

from agentrl.sandboxes.base import SANDBOX_GID, SANDBOX_UID, Limits
from agentrl.sandboxes.hostfs import O_DIR, clear_dir, clear_special_bits, copy_tree, sync_tree

log = logging.getLogger(__name__)

#: Where sessions keep their lock files and mount points (root-owned, mode 0711).
STATE_ROOT = Path(os.environ.get("AGENTRL_SANDBOX_STATE", "/run/agentrl-sandbox"))
#: Source name of every quota tmpfs (``agentrl-sbx-<session>``), as /proc/self/mountinfo shows it.
TAG = "agentrl-sbx-"
#: Less free space than this counts as full (a tmpfs fills to the last page).
FULL_BYTES = 16 << 10
#: Inodes the layout itself uses (the tmpfs root, ``workspace``, ``tmp``, ``shm``).
OWN_INODES = 4
#: The scratch directories: emptied before each command, always mode 1777 like a host's /tmp.
SCRATCH = ("tmp", "shm")
#: Prefix of a lock file not yet renamed into place (see ``_hold_lock``).
NEW_LOCK = ".new-"

_MS_NOSUID, _MS_NODEV, _MS_BIND, _MS_PRIVATE, _MNT_DETACH = 0x2, 0x4, 0x1000, 0x40000, 0x2
_libc = ctypes.CDLL(None, use_errno=True)


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = [None if v is None else v.encode() for v in (source, target, fstype, data)]
    if _libc.mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), enc[3]) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source or ''} on {target}: {os.strerror(err)}")


def _umount(target: str) -> None:
    """Detach the mount at ``target`` (lazily: a busy mount goes away when its last user does)."""
    if _libc.umount2(target.encode(), _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):  # not a mount point (any more)
            raise OSError(err, f"umount {target}: {os.strerror(err)}")


def _mounts() -> list[tuple[str, str]]:
    """``(mount point, source)`` of every mount of this namespace, innermost last."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        decode = lambda s: s.encode().decode("unicode_escape").encode("latin-1").decode()  # noqa: E731
        out.append((decode(fields[4]), decode(fields[sep + 2])))
    return out


def _top_source(path: str) -> str | None:
    """Source of the mount on top of ``path`` (None when nothing is mounted there)."""
    sources = [src for point, src in _mounts() if point == path]
    return sources[-1] if sources else None


def _is_full(path: str) -> bool:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize < FULL_BYTES or st.f_favail == 0


# --- Sessions -------------------------------------------------------------------------------------------


def _state_root() -> Path:
    """The state directory, made root-only; refuses one that is a symlink or not root's."""
    try:
        STATE_ROOT.mkdir(mode=0o711, parents=True)
    except FileExistsError:
        pass
    st = os.lstat(STATE_ROOT)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        raise OSError(f"{STATE_ROOT} is not a directory that only root may write")
    return STATE_ROOT


def _hold_lock(path: Path) -> int:
    """Create ``path`` already locked (made under a temporary name, locked, then renamed)."""
    tmp = path.with_name(f"{NEW_LOCK}{path.name}-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.rename(tmp, path)
    return fd


class QuotaWorkspace:
    """The host directory ``workspace`` backed, for one session, by a quota tmpfs (see the module docstring).

    ``inner``, ``tmp`` and ``shm`` are the host paths a backend mounts at ``/workspace``, ``/tmp`` and
    ``/dev/shm``.
    ``too_big`` is set when the host directory did not fit in the quota: nothing is mounted over it, it
    is left as it was, and the session should run nothing (``Reason.DISK_LIMIT``).
    """

    def __init__(self, workspace: Path, limits: Limits):
        self.workspace = workspace
        self.sid = f"{os.getpid()}-{secrets.token_hex(6)}"
        root = _state_root()
        self._lock = _hold_lock(root / f"{self.sid}.lock")
        self.dir = root / self.sid
        self.fs = self.dir / "fs"
        self.inner = self.fs / "workspace"
        self.tmp = self.fs / "tmp"
        self.shm = self.fs / "shm"
        self.too_big = False
        self._copied_in: dict[int, int] = {}
        self._fs_fd = self._host_fd = self._bound_fd = -1
        self._bound = False
        try:
            self._host_fd = os.open(workspace, O_DIR)
            st = os.fstat(self._host_fd)
            self.owner = (st.st_uid, st.st_gid)
            self.dir.mkdir(mode=0o711)
            (self.dir / "session.json").write_text(
                json.dumps({"workspace": str(workspace), "owner": list(self.owner)})
            )
            self.fs.mkdir(mode=0o711)
            options = f"size={limits.disk_mb}m,nr_inodes={limits.inodes + OWN_INODES},mode=0711"
            _mount(TAG + self.sid, str(self.fs), "tmpfs", _MS_NOSUID | _MS_NODEV, options)
            _mount(None, str(self.fs), None, _MS_PRIVATE)
            self._fs_fd = os.open(self.fs, O_DIR)
            os.mkdir("workspace", 0o755, dir_fd=self._fs_fd)
            os.chown("workspace", SANDBOX_UID, SANDBOX_GID, dir_fd=self._fs_fd)
            for name in SCRATCH:
                os.mkdir(name, 0o777, dir_fd=self._fs_fd)
                os.chmod(name, 0o1777, dir_fd=self._fs_fd)
            inner = os.open("workspace", O_DIR, dir_fd=self._fs_fd)
            try:
                self._copied_in = copy_tree(self._host_fd, inner, SANDBOX_UID, SANDBOX_GID)
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                self.too_big = True
            finally:
                os.close(inner)
            if not self.too_big:
                # Onto the directory we opened, not whatever its path names by now.
                _mount(str(self.inner), f"/proc/self/fd/{self._host_fd}", None, _MS_BIND)
                self._bound = True
                self._bound_fd = os.open(workspace, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
                if os.fstat(self._bound_fd).st_dev != os.fstat(self._fs_fd).st_dev:
                    raise OSError(f"{workspace} was replaced while its quota was mounted")
                _mount(None, f"/proc/self/fd/{self._bound_fd}", None, _MS_PRIVATE)
        except BaseException:
            self.close(copy_back=False)
            raise

    def full(self) -> bool:
        """No byte or no inode left in the quota."""
        return self.too_big or _is_full(str(self.fs))

    def after_run(self) -> bool:
        """Clear setuid/setgid bits the program left (the mount is ``nosuid`` anyway); return ``full()``."""
        for name in ("workspace", *SCRATCH):
            fd = os.open(name, O_DIR, dir_fd=self._fs_fd)
            try:
                clear_special_bits(fd)
                mode = stat.S_IMODE(os.fstat(fd).st_mode)  # the program owns /workspace and may chmod it
                wanted = 0o1777 if name in SCRATCH else mode & 0o777
                if mode != wanted:
                    os.fchmod(fd, wanted)
            finally:
                os.close(fd)
        return self.full()

    def clear_tmp(self) -> None:
        """Empty ``/tmp`` and ``/dev/shm`` for the next command (call it with no process of the sandbox left)."""
        for name in SCRATCH:
            try:
                fd = os.open(name, O_DIR, dir_fd=self._fs_fd)
                try:
                    clear_dir(fd)
                finally:
                    os.close(fd)
            except OSError as exc:  # what is left still counts against the quota; nothing else depends on it
                log.warning("sandbox %s: emptying %s failed: %s", self.sid, name, exc)

    def close(self, copy_back: bool = True) -> None:
        """Copy the workspace back into the host directory, handed to its owner, and unmount everything."""
        try:
            if copy_back and self._bound and self._fs_fd >= 0:
                _copy_back(self._fs_fd, self._host_fd, self.owner, self._copied_in)
        except OSError as exc:
            log.error(
                "sandbox workspace %s: copying the program's files back failed: %s", self.workspace, exc
            )
        finally:
            if self._bound:  # the mount we put there, even if the host renamed the directory meanwhile
                _umount(f"/proc/self/fd/{self._bound_fd}" if self._bound_fd >= 0 else str(self.workspace))
            for fd in (self._fs_fd, self._host_fd, self._bound_fd):
                if fd >= 0:
                    os.close(fd)
            self._fs_fd = self._host_fd = self._bound_fd = -1
            _remove_session(self.dir)
            self.dir.with_name(f"{self.sid}.lock").unlink(missing_ok=True)
            os.close(self._lock)


def _copy_back(fs_fd: int, host_fd: int, owner: tuple[int, int], unchanged: dict[int, int]) -> None:
    """Make the host directory hold what the quota's workspace holds (what is unchanged stays as it is)."""
    inner = os.open("workspace", O_DIR, dir_fd=fs_fd)
    try:
        sync_tree(inner, host_fd, *owner, unchanged)
    finally:
        os.close(inner)


def _remove_session(session_dir: Path) -> None:
    """Unmount a session's quota filesystem (freeing it) and remove its directory."""
    fs = session_dir / "fs"
    if os.path.ismount(fs):
        _umount(str(fs))
    steps = ((Path.unlink, session_dir / "session.json"), (Path.rmdir, fs), (Path.rmdir, session_dir))
    for remove, path in steps:
        try:
            remove(path)
        except FileNotFoundError:
            continue
        except OSError as exc:  # still mounted: left for the next recover_stale
            log.error("sandbox state %s not removed: %s", session_dir, exc)
            return


def _recover(session_dir: Path) -> str:
    """Finish the close of an orphaned session; returns what was done."""
    try:
        meta = json.loads((session_dir / "session.json").read_text())
        workspace, owner = meta["workspace"], tuple(meta["owner"])
    except (OSError, ValueError, KeyError):
        _remove_session(session_dir)
        return f"removed {session_dir.name} (no usable session record)"
    tag = TAG + session_dir.name
    what = f"removed {session_dir.name}"
    if _top_source(workspace) == tag and os.path.ismount(session_dir / "fs"):
        _umount(workspace)  # the host directory shows through again; then it gets the files back
        fs_fd = os.open(session_dir / "fs", O_DIR)
        try:
            host_fd = os.open(workspace, O_DIR)
            try:
                _copy_back(fs_fd, host_fd, owner, {})  # type: ignore[arg-type]
            finally:
                os.close(host_fd)
        finally:
            os.close(fs_fd)
        what = f"gave {workspace} back to uid {owner[0]} with the program's files"
    _remove_session(session_dir)
    return what


def recover_stale() -> list[str]:
    """Finish the ``close`` of every session whose supervisor is gone; returns one line per repair.

    Safe to run at any time from any process: a live session's lock cannot be taken.
    """
    if os.geteuid() != 0 or not STATE_ROOT.is_dir():
        return []
    done = []
    for entry in sorted(STATE_ROOT.iterdir()):
        name = entry.name
        if name.startswith(NEW_LOCK):  # a lock not yet renamed into place: stale after a minute
            try:
                if time.time() - entry.lstat().st_mtime > 60:
                    entry.unlink()
            except OSError:
                pass
            continue
        if not name.endswith(".lock"):
            if entry.is_dir() and not (STATE_ROOT / f"{name}.lock").exists():
                done.append(_recover(entry))  # its lock is gone: an earlier recovery stopped half-way
            continue
        try:
            fd = os.open(entry, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its supervisor is alive
            session_dir = STATE_ROOT / name.removesuffix(".lock")
            if session_dir.exists():
                try:
                    done.append(_recover(session_dir))
                except OSError as exc:
                    done.append(f"could not recover {session_dir}: {exc}")
                    continue
            entry.unlink(missing_ok=True)
        finally:
            os.close(fd)
    return done


class PlainWorkspace:
    """No quota (not root: nothing can be mounted): the host directory is the workspace itself."""

    too_big = False
    tmp = shm = None

    def __init__(self, workspace: Path, limits: Limits):
        self.workspace = self.inner = workspace

    def full(self) -> bool:
        return False

    def after_run(self) -> bool:
        fd = os.open(self.workspace, O_DIR)
        try:
            clear_special_bits(fd)
        finally:
            os.close(fd)
        return False

    def clear_tmp(self) -> None:
        return None

    def close(self, copy_back: bool = True) -> None:
        return None


def open_workspace(workspace: Path, limits: Limits) -> QuotaWorkspace | PlainWorkspace:
    """The workspace storage a session uses here: with a quota as root, the plain directory otherwise."""
    if os.geteuid() == 0:
        return QuotaWorkspace(workspace, limits)
    return PlainWorkspace(workspace, limits)
