"""A private, throw-away PostgreSQL server for tests and benchmarks (loopback only).

``postgres_server()`` runs ``initdb`` in a temporary directory and starts ``postgres`` on
127.0.0.1 at a free port with ``fsync=off`` (test data need not survive a power cut), then stops it
and deletes the directory. It uses the binaries of a Debian/Ubuntu ``postgresql`` package
(``/usr/lib/postgresql/*/bin``) or whatever ``pg_ctl`` is on ``PATH``. Run as root, the server runs
as the ``postgres`` user, since PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL binaries, or the server would not start (the message says which)."""


def find_postgres_bin() -> Path | None:
    """The directory holding ``initdb``/``pg_ctl``, newest version first; ``None`` if absent."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
    for directory in candidates:
        if (Path(directory) / "initdb").exists():
            return Path(directory)
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def postgres_server(database: str = "agentrl_test") -> Iterator[str]:
    """Start a private server, yield ``postgresql+psycopg://postgres@127.0.0.1:PORT/database``, stop it."""
    bindir = find_postgres_bin()
    if bindir is None:
        raise PostgresUnavailable("PostgreSQL binaries not found (apt-get install postgresql)")
    as_user: list[str] = []
    workdir = Path(tempfile.mkdtemp(prefix="agentrl-pg-"))
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailable("running as root and there is no 'postgres' user to run the server") from None
        os.chown(workdir, account.pw_uid, account.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"] if shutil.which("runuser") else ["su", "postgres", "-s", "/bin/sh", "-c"]
    data = workdir / "data"
    port = _free_port()

    def run(*argv: str) -> None:
        command = list(argv) if not as_user or as_user[0] == "runuser" else [shlex.join(argv)]
        done = subprocess.run([*as_user, *command], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise PostgresUnavailable(f"{Path(argv[0]).name} failed: {(done.stderr or done.stdout).strip()[-500:]}")

    started = False
    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {workdir} -c fsync=off -c max_connections=100"
        run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(workdir / "server.log"), "-w", "-o", options, "start")
        started = True
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", database)
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/{database}"
    finally:
        if started:
            with contextlib.suppress(Exception):
                run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(workdir, ignore_errors=True)


def create_database(admin_url: str, prefix: str = "t") -> str:
    """Create a fresh empty database on the server of ``admin_url``; return its URL."""
    from sqlalchemy import create_engine, make_url

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    finally:
        engine.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, url: str) -> None:
    """Drop a database made by :func:`create_database` (its connections are ended first)."""
    from sqlalchemy import create_engine, make_url

    name = make_url(url).database
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        engine.dispose()
