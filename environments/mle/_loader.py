"""The in-sandbox loader of one MLE attempt, run as ``python -I -u -c "<this file's source>"``.

It is not imported by the host: :mod:`.milestones` passes its source text on the command line.
Nothing of the agent's exists in the process until the loader is done, and ``-I`` keeps the
workspace (where the previous attempt may have planted ``hmac.py`` or ``dis.py``) off
``sys.path`` while the loader imports what it needs.

1. Reads the payload file (``O_NOFOLLOW | O_NONBLOCK``, a regular file with one link, bounded)
   and deletes it before any of the program runs: ``MAGIC | 32-byte key | marshalled code``.
2. Makes the process non-dumpable (``PR_SET_DUMPABLE = 0``), so no other process of the same
   user (a child the program starts) can read its memory through ``/proc/<pid>/mem`` or ptrace,
   and with Landlock forbids reading files under ``/proc`` but a few harmless ones, so the
   process cannot read its own ``/proc/<pid>/mem`` through any path either.
3. Starts the *tagger*, a thread that holds the key inside an OpenSSL HMAC object. A milestone
   call site, compiled by the host as ``<name with a space>("agentrl.milestone", name)`` where the
   name is bound to :func:`sys.audit`, raises an audit event; the audit hook hands the calling
   thread's id to the tagger and waits. The tagger reads that thread's stack: the innermost frame
   must be the hook and the next one a frame running one of the program's code objects (identity)
   at the offset of one of its milestone calls (found with :mod:`dis`); only then it writes
   ``@@agentrl-milestone <name> <HMAC(key, name)>@@`` to its own copy of stdout. What the site is
   decides the milestone, never an argument.
4. Installs a second audit hook that refuses what could reach the tagger's state or fake a call
   site: ``sys._current_frames`` (except from the tagger), ``gc.get_objects`` /
   ``get_referrers`` / ``get_referents``, ``sys.settrace`` / ``setprofile`` (a trace function can
   jump into a dead branch), ``sys.monitoring``, further audit hooks (they would run inside ours),
   ctypes reads of raw addresses and opening ``/proc/<pid>/mem`` or ``pagemap``.
5. Runs the program with ``__name__ == "__main__"``, ``__file__ == "solution.py"`` and the
   workspace first on ``sys.path`` (as ``python solution.py`` would), and prints its traceback
   without the loader's own frames.

Neither hook holds the key: a frame of theirs that a signal handler or a traceback exposes
shows nothing secret. The tagger runs outside the main thread (Python runs signal handlers in the
main thread only), never raises, and never calls anything the program can replace.
"""

# ruff: noqa: PLC0415  (imports happen inside the function so that nothing is left at module level)

LOADER_EXIT = 3  # exit status when the loader itself cannot run the program


def _prepare() -> tuple[object, dict]:
    """Steps 1 to 4; returns the program's code and globals. Its frame, which held the key, is gone
    before the program starts (the caller's frame stays alive below the program's, so it must hold
    nothing but these two)."""
    import _queue
    import _thread
    import dis
    import hmac
    import marshal
    import os
    import stat
    import sys

    run_file, magic, key_bytes, max_payload = ".run.bin", b"AGENTRL1", 32, 64 << 20
    emitter, event_name = "agentrl milestone", "agentrl.milestone"

    def fail(message: str) -> None:
        os.write(2, f"agentrl loader: {message}\n".encode())
        os._exit(LOADER_EXIT)

    # 1. the payload, read and deleted before anything of the program's exists
    try:
        fd = os.open(run_file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        fail(f"cannot open {run_file}: {exc.strerror}")
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or not 40 < st.st_size <= max_payload:
        fail(f"{run_file} is not the payload the host wrote")
    buf = bytearray(st.st_size)
    view, got = memoryview(buf), 0
    while got < len(buf):
        n = os.readv(fd, [view[got:]])
        if n <= 0:
            break
        got += n
    os.close(fd)
    try:
        os.unlink(run_file)
    except OSError as exc:  # the program must not find the key in its workspace
        fail(f"cannot delete {run_file}: {exc.strerror}")
    if got != len(buf) or bytes(buf[:8]) != magic:
        fail(f"{run_file} is not the payload the host wrote")
    key = buf[8 : 8 + key_bytes]
    mac = hmac.new(key, digestmod="sha256")
    key[:] = bytes(key_bytes)
    code = marshal.loads(view[8 + key_bytes : got])
    view.release()
    buf[:] = bytes(len(buf))
    del key, view, buf

    # 2. no other process may read this one's memory, nor this one through /proc/<pid>/mem
    import ctypes

    if ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE = 4
        fail("prctl(PR_SET_DUMPABLE, 0) failed")
    _forbid_reading_proc(ctypes, os)

    # 3. milestone call sites: code object id -> (code object, {offset of the call: milestone})
    sites: dict[int, tuple[object, dict[int, str]]] = {}
    todo = [code]
    while todo:
        co = todo.pop()
        todo.extend(c for c in co.co_consts if isinstance(c, type(co)))
        calls: dict[int, str] = {}
        loading, name = False, None
        for ins in dis.get_instructions(co):
            if ins.opname in ("LOAD_NAME", "LOAD_GLOBAL") and ins.argval == emitter:
                loading, name = True, None
            elif loading and ins.opname == "LOAD_CONST" and ins.argval != event_name and name is None:
                name = ins.argval
            elif loading and ins.opname == "CALL":
                if isinstance(name, str):
                    calls[ins.offset] = name
                loading = False
        if calls:
            sites[id(co)] = (co, calls)

    requests = _queue.SimpleQueue()
    out_fd = os.dup(1)  # the program may redirect fd 1; milestones go to the run's stdout still
    # captured now: the program may replace module attributes later, never these references
    write, current_frames, get_ident, getpid = os.write, sys._current_frames, _thread.get_ident, os.getpid
    allocate_lock = _thread.allocate_lock
    lock_type, pid = type(allocate_lock()), getpid()
    emitted: set[str] = set()

    def hook_milestone(event, args):  # holds no secret: what it knows, the program may know
        if type(event) is not str or event != event_name:
            return
        if getpid() != pid:  # a forked child has no tagger thread
            return
        if type(args) is tuple and len(args) == 1 and type(args[0]) is str and args[0] in emitted:
            return  # a site in a loop: nothing new to say
        done = allocate_lock()
        done.acquire()
        requests.put((get_ident(), done))
        done.acquire(True, 5.0)

    hook_code = hook_milestone.__code__

    def tagger():  # holds the key; never raises, never calls what the program could replace
        while True:
            try:
                item = requests.get()
                if type(item) is not tuple or len(item) != 2:
                    continue
                ident, done = item
                if type(ident) is not int or type(done) is not lock_type:
                    continue
                try:
                    frame = current_frames().get(ident)
                    if frame is not None and frame.f_code is hook_code and frame.f_back is not None:
                        site = frame.f_back
                        entry = sites.get(id(site.f_code))
                        if entry is not None and entry[0] is site.f_code and site.f_trace is None:
                            name = entry[1].get(site.f_lasti)
                            if name is not None and name not in emitted:
                                tag = mac.copy()
                                tag.update(name.encode())
                                write(
                                    out_fd, f"@@agentrl-milestone {name} {tag.hexdigest()[:32]}@@\n".encode()
                                )
                                emitted.add(name)
                    frame = site = None
                finally:
                    if done.locked():
                        done.release()
            except BaseException:  # noqa: BLE001 (a traceback here would expose this frame)
                pass

    tagger_ident = _thread.start_new_thread(tagger, ())
    del tagger

    # 4. refuse what could reach the tagger's state or fake a call site
    denied = frozenset({
        "sys.settrace", "sys.setprofile", "sys._settraceallthreads", "sys._setprofileallthreads",
        "sys.monitoring.register_callback", "sys.addaudithook", "gc.get_objects", "gc.get_referrers",
        "gc.get_referents", "ctypes.string_at", "ctypes.wstring_at", "ctypes.cdata",
    })  # fmt: skip
    realpath, join, getcwd = os.path.realpath, os.path.join, os.getcwd

    def is_process_memory(path) -> bool:
        if type(path) is bytes:
            path = os.fsdecode(path)
        if type(path) is not str:
            return False
        parts = realpath(join(getcwd(), path)).split("/")
        if path.rstrip("/").rsplit("/", 1)[-1] in ("mem", "pagemap") and not path.startswith("/"):
            return True  # relative to a directory descriptor we cannot see
        return len(parts) >= 4 and parts[1] == "proc" and parts[-1] in ("mem", "pagemap")

    def hook_policy(event, args):
        if type(event) is not str:
            return
        if event in denied or (event == "sys._current_frames" and get_ident() != tagger_ident):
            raise RuntimeError(f"{event} is not allowed in the MLE sandbox")
        if event == "open" and type(args) is tuple and args and is_process_memory(args[0]):
            raise PermissionError(f"reading process memory is not allowed in the MLE sandbox: {args[0]}")

    sys.addaudithook(hook_milestone)
    sys.addaudithook(hook_policy)  # after this one, no other hook can be added

    namespace = {"__name__": "__main__", "__file__": "solution.py", "__builtins__": __builtins__}
    namespace[emitter] = sys.audit
    sys.argv = ["solution.py"]
    sys.path.insert(0, getcwd())
    sys.dont_write_bytecode = True
    return code, namespace


def _forbid_reading_proc(ctypes, os) -> bool:
    """Landlock (Linux >= 5.13): from now on this process and its children may read files anywhere
    but under /proc, where only a few harmless files stay readable; so /proc/<pid>/mem cannot be
    read through any link or directory descriptor. Returns False where Landlock is missing (the
    audit hook then checks paths, and a non-dumpable process's mem file belongs to root)."""
    libc = ctypes.CDLL(None, use_errno=True)
    syscall = libc.syscall
    syscall.restype = ctypes.c_long
    create, add_rule, restrict, path_beneath, read_file = 444, 445, 446, 1, 1 << 2

    class RulesetAttr(ctypes.Structure):
        _fields_ = [("handled_access_fs", ctypes.c_uint64)]

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    if syscall(create, None, 0, 1) < 1:  # LANDLOCK_CREATE_RULESET_VERSION
        return False
    attr = RulesetAttr(read_file)
    ruleset = syscall(create, ctypes.byref(attr), ctypes.sizeof(attr), 0)
    if ruleset < 0:
        return False
    pid = os.getpid()
    allowed = [f"/{name}" for name in os.listdir("/") if name != "proc"]
    allowed += [f"/proc/{name}" for name in ("cpuinfo", "meminfo", "stat", "loadavg", "sys", "version")]
    allowed += [
        f"/proc/{pid}/{name}" for name in ("status", "stat", "statm", "cgroup", "limits", "mountinfo")
    ]
    try:
        for path in allowed:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            rule = PathBeneath(read_file, fd)
            syscall(add_rule, ruleset, path_beneath, ctypes.byref(rule), 0)
            os.close(fd)
        if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS, required to restrict oneself
            return False
        return syscall(restrict, ruleset, 0) == 0
    finally:
        os.close(ruleset)


def _agentrl_main() -> None:
    """5. Run the program as ``python solution.py`` would."""
    import sys
    import traceback

    code, namespace = _prepare()
    try:
        exec(code, namespace)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 (printed as Python would, without the loader's frames)
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == "<string>":
            tb = tb.tb_next
        traceback.print_exception(type(exc), exc, tb)
        sys.stderr.flush()
        raise SystemExit(1) from None


if __name__ == "__main__":
    _agentrl_main()
