"""Connecting to a store: URL parsing, engine set-up per backend, schema creation and version checks.

Every way a database can be unusable (bad URL, missing driver, unreachable server, a file that is
not SQLite, a corrupt SQLite file, a schema older or newer than this agentrl) becomes one
:class:`StoreError` line, and is detected before anything is written.
"""

from __future__ import annotations

import os
import urllib.parse
import weakref
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Engine, MetaData, String, Table, create_engine, event, inspect, select, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import StaticPool
from sqlalchemy.schema import PrimaryKeyConstraint

from agentrl.store.errors import StoreError
from agentrl.store.models import SCHEMA_HEAD, SCHEMA_REVISIONS, Base

SQLITE_HEADER = b"SQLite format 3\x00"
SQLITE_BUSY_TIMEOUT_S = 30.0
POSTGRES_CONNECT_TIMEOUT_S = 5
_PG_CREATE_LOCK = 0x61676E74  # advisory lock key serialising concurrent store creation ("agnt")

# Alembic's own version table, declared here so a new store can be stamped without importing alembic.
_version_table = Table(
    "alembic_version",
    MetaData(),
    Column("version_num", String(32), nullable=False),
    PrimaryKeyConstraint("version_num", name="alembic_version_pkc"),
)
_STORE_TABLES = {"runs", "episodes", "steps"}
_URL_HINT = "use sqlite:///path/to/store.db or postgresql+psycopg://user@host:port/dbname"


def parse_url(url: str | os.PathLike[str]) -> URL:
    """Parse a store URL; a bare path means a SQLite file, ``postgresql://`` means psycopg 3."""
    raw = os.fspath(url)
    if "://" not in raw:
        raw = "sqlite:///" + raw
    try:
        parsed = make_url(raw)
    except (ArgumentError, ValueError):
        raise StoreError(f"invalid store URL {raw!r}", hint=_URL_HINT) from None
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise StoreError(f"unsupported store backend {parsed.get_backend_name()!r} in {describe(parsed)}", hint=_URL_HINT)
    return parsed


def describe(url: URL) -> str:
    """The URL for messages, password hidden."""
    return url.render_as_string(hide_password=True)


def sqlite_path(url: URL) -> Path | None:
    """The file of a SQLite URL, ``None`` for an in-memory database."""
    database = url.database
    if not database or database == ":memory:" or database.startswith("file::memory:"):
        return None
    return Path(database)


def _check_sqlite_file(path: Path, create: bool) -> None:
    if path.is_dir():
        raise StoreError(f"{path} is a directory, not a SQLite store file")
    if path.exists():
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_HEADER))
        if head and head != SQLITE_HEADER:
            raise StoreError(
                f"{path} is not a SQLite database (corrupt, or another kind of file)",
                hint="point --store at an agentrl store, or move the file away",
            )
        return
    if not create:
        raise StoreError(f"no store at {path}", hint="a store is created by its first writer, e.g. agentrl eval --store")
    if not path.parent.exists():
        raise StoreError(f"cannot create store {path}: directory {path.parent} does not exist")


def claim_new_sqlite_file(path: Path) -> bool:
    """Create the empty store file ``path`` if it does not exist; True when this call created it.

    Knowing that the file is ours lets :func:`discard_new_sqlite_file` remove it when making the
    store fails (a full disk), rather than leaving an empty or half-made database behind.
    """
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        return False
    except OSError as exc:
        raise StoreError(f"cannot create store {path}: {exc.strerror or exc}", hint=_os_hint(exc.strerror)) from None
    return True


def discard_new_sqlite_file(path: Path) -> None:
    """Remove a store file made by :func:`claim_new_sqlite_file` and SQLite's files beside it."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _os_hint(detail: str | None) -> str | None:
    lower = (detail or "").lower()
    if "full" in lower or "no space" in lower:
        return "free space on that file system (df -h shows it) or put the store elsewhere"
    if "disk i/o error" in lower:
        return "is the disk full (df -h) or failing? SQLite could not write the store"
    if "read-only" in lower or "readonly" in lower:
        return "the file system is read-only: put the store on a writable one"
    return None


def _read_only_url(url: URL, path: Path) -> URL | None:
    """A URL that opens ``path`` read-only when this process cannot write it (or its directory), else None.

    SQLite in WAL mode needs to write its ``-shm`` file even to read, so a store on a read-only
    mount cannot be opened the usual way. ``mode=ro`` never writes the database; ``immutable=1``
    (no locks, no ``-shm``) is added when the file system itself is read-only, so nothing can change
    the file while it is read, and no ``-wal`` holds commits that only the write-ahead log has.
    """
    if os.access(path, os.W_OK) and os.access(path.parent, os.W_OK | os.X_OK):
        return None
    query = {"mode": "ro", "uri": "true"}
    wal = Path(f"{path}-wal")
    read_only_fs = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    if read_only_fs and not (wal.exists() and wal.stat().st_size > 0):
        query["immutable"] = "1"
    return url.set(database="file:" + urllib.parse.quote(str(path.resolve())), query=query)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # pysqlite's own transaction handling defers BEGIN and breaks transactional DDL; SQLAlchemy
    # emits BEGIN itself instead (see _sqlite_on_begin), as its documentation recommends.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")  # with WAL: a crash loses no commit, power loss only the last ones
    cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    # A transaction that reads before it writes must take the write lock up front, or SQLite answers
    # "database is locked" at once instead of waiting for the busy timeout.
    immediate = conn.get_execution_options().get("sqlite_immediate", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()
_fork_hook_installed = False


def _forget_connections_in_child() -> None:
    for engine in list(_ENGINES):
        engine.dispose(close=False)  # drop, without closing, the sockets/files shared with the parent


def _guard_against_fork(engine: Engine) -> None:
    """A forked child must not touch its parent's pooled connections (a PostgreSQL socket shared by
    two processes desynchronises both): after ``fork`` (multiprocessing, Ray workers) the child's
    engines start with an empty pool, as SQLAlchemy's documentation recommends."""
    global _fork_hook_installed
    _ENGINES.add(engine)
    if not _fork_hook_installed and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_forget_connections_in_child)
        _fork_hook_installed = True


def make_engine(url: URL, create: bool = True) -> Engine:
    """An engine for ``url`` with the per-backend settings the store relies on (WAL, timeouts)."""
    try:
        if url.get_backend_name() == "sqlite":
            path = sqlite_path(url)
            if path is not None:
                _check_sqlite_file(path, create)
                if not create:  # a reader: a store it may not write is opened read-only
                    url = _read_only_url(url, path) or url
            kwargs: dict[str, Any] = {
                "connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}
            }
            if path is None:
                kwargs["poolclass"] = StaticPool  # one shared in-memory database
            engine = create_engine(url, **kwargs)
            event.listen(engine, "connect", _sqlite_on_connect)
            event.listen(engine, "begin", _sqlite_on_begin)
            if path is not None:
                _guard_against_fork(engine)
            return engine
        engine = create_engine(
            url,
            pool_pre_ping=True,
            connect_args={"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S, "application_name": "agentrl"},
        )
        _guard_against_fork(engine)
        return engine
    except (NoSuchModuleError, ModuleNotFoundError) as exc:
        raise StoreError(
            f"no database driver for {describe(url)} ({exc})", hint="pip install 'agentrl[postgres]' (psycopg 3)"
        ) from None


def database_error(url: URL, exc: BaseException) -> StoreError:
    """Translate a driver error met while opening ``url`` into one line and a hint."""
    orig = getattr(exc, "orig", None) or exc
    detail = " ".join(str(orig).split()) or type(orig).__name__
    lower = detail.lower()
    if url.get_backend_name() == "sqlite":
        path = sqlite_path(url)
        if "malformed" in lower or "not a database" in lower or "corrupt" in lower:
            return StoreError(
                f"{path} is a corrupt SQLite database ({detail})",
                hint=f"restore it from a copy; `sqlite3 {path} .recover` may salvage rows",
            )
        hint = _os_hint(detail)
        if hint is None and path is not None and path.exists() and not os.access(path.parent, os.W_OK | os.X_OK):
            hint = "the store cannot be written here (read-only file system or directory); reading it works"
        return StoreError(f"cannot open SQLite store {path}: {detail}", hint=hint)
    if "connect" in lower or "server" in lower or "timeout" in lower:
        return StoreError(
            f"cannot connect to {describe(url)}: {detail}",
            hint="check that the server is running and the URL's host, port, user and database",
        )
    return StoreError(f"database error in {describe(url)}: {detail}")


def read_revision(conn: Connection) -> tuple[str | None, set[str]]:
    """The store's schema revision (``None`` when unstamped) and the tables the database has."""
    tables = set(inspect(conn).get_table_names())
    if "alembic_version" not in tables:
        return None, tables
    revisions = conn.execute(select(_version_table.c.version_num)).scalars().all()
    if len(revisions) != 1:
        raise StoreError(f"store has {len(revisions)} schema revisions {revisions}, expected one")
    return revisions[0], tables


def check_revision(url: URL, revision: str) -> None:
    if revision == SCHEMA_HEAD:
        return
    if revision in SCHEMA_REVISIONS:
        raise StoreError(
            f"store {describe(url)} has schema {revision}, older than this agentrl's {SCHEMA_HEAD}",
            hint=f"run: agentrl store upgrade --store '{describe(url)}'",
        )
    raise StoreError(
        f"store {describe(url)} has schema {revision}, newer than this agentrl knows ({SCHEMA_HEAD})",
        hint="upgrade agentrl (pip install -U agentrl) to read it",
    )


def _not_a_store(url: URL, tables: set[str]) -> StoreError:
    shown = ", ".join(sorted(tables)[:5])
    return StoreError(f"{describe(url)} holds other tables ({shown}) and no agentrl store schema; refusing to touch it")


def ensure_schema(engine: Engine, url: URL, create: bool) -> None:
    """Check the store's schema revision; create the schema in an empty database when ``create``."""
    with engine.connect() as conn:
        revision, tables = read_revision(conn)
        conn.rollback()
    if revision is not None:
        check_revision(url, revision)
        return
    if tables:
        raise _not_a_store(url, tables)
    if not create:
        raise StoreError(f"no agentrl store in {describe(url)}", hint="open it with create=True to make one")
    _create_schema(engine, url)


def _set_wal(engine: Engine) -> None:
    """Switch a SQLite file to write-ahead logging (persistent; must run outside a transaction)."""
    raw = engine.raw_connection()
    try:
        raw.driver_connection.execute("PRAGMA journal_mode=WAL").fetchall()
    finally:
        raw.close()


def _create_schema(engine: Engine, url: URL) -> None:
    """Create tables and stamp the head revision in one transaction, safe against concurrent creators."""
    sqlite = url.get_backend_name() == "sqlite"
    if sqlite and sqlite_path(url) is not None:
        try:
            _set_wal(engine)
        except engine.dialect.loaded_dbapi.Error as exc:  # raw driver call: not wrapped by SQLAlchemy
            raise database_error(url, exc) from exc
    with engine.connect().execution_options(sqlite_immediate=True) as conn, conn.begin():
        if not sqlite:
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_CREATE_LOCK})
        revision, tables = read_revision(conn)  # another process may have won the race
        if revision is not None:
            check_revision(url, revision)
            return
        if tables - _STORE_TABLES:
            raise _not_a_store(url, tables)
        Base.metadata.create_all(conn)
        _version_table.create(conn)
        conn.execute(_version_table.insert().values(version_num=SCHEMA_HEAD))


def upgrade_schema(url: str, revision: str = "head", *, create: bool = False) -> tuple[str | None, str]:
    """Migrate the store at ``url`` to ``revision`` (default: this agentrl's head; an older revision
    migrates down) with Alembic.

    Returns ``(old_revision, new_revision)``. Runs in one transaction: an upgrade that fails leaves
    the old schema and its data as they were. ``create=True`` also builds an empty database from the
    migrations (used to make stores of an older schema in tests).
    """
    from agentrl.store.migrate import run_upgrade

    parsed = parse_url(url)
    engine = make_engine(parsed, create=create)
    try:
        with engine.connect() as conn:
            old, tables = read_revision(conn)
            conn.rollback()
            if old is None and tables:
                raise _not_a_store(parsed, tables)
            if old is None and not create:
                raise StoreError(f"no agentrl store in {describe(parsed)}")
            if old is not None and old not in SCHEMA_REVISIONS:
                check_revision(parsed, old)  # raises: newer than we know
            if old is None and parsed.get_backend_name() == "sqlite" and sqlite_path(parsed) is not None:
                _set_wal(engine)
            run_upgrade(conn, revision, current=old)
            new, _ = read_revision(conn)
            conn.commit()
        return old, new or ""
    except (DBAPIError, SQLAlchemyError) as exc:
        raise database_error(parsed, exc) from exc
    finally:
        engine.dispose()
