"""Where studies live: SQLAlchemy URLs (SQLite file by default, PostgreSQL for many machines).

>>> mask("postgresql+psycopg://tuner:secret@db:5432/tuner")
'postgresql+psycopg://tuner:***@db:5432/tuner'
"""

import contextlib
import fcntl
import os
import random
import re
import sqlite3
import time
import zlib
from pathlib import Path

import optuna
import sqlalchemy
from sqlalchemy.engine import make_url

from tuner.errors import UserError
from tuner.search.liveness import Requeue

DEFAULT_URL = "sqlite:///tuner.db"
# Retries of a dead worker's trial per lineage; Optuna counts every retry of the lineage (after a
# stop signal or a transient error too), so one is too few for a flaky fleet, and a bound still
# stops a trial that kills every worker that takes it (the kernel's out-of-memory killer).
STALE_RETRIES = 5
# Per-session server settings. PgBouncer refuses them unless its ignore_startup_parameters
# lists options, as bench/pgbouncer.ini does.
SERVER_OPTIONS = ("-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3 "
                  "-c tcp_user_timeout=30000 -c idle_in_transaction_session_timeout=60000")


SQLITE_DRIVER_ARGS = {"timeout", "isolation_level", "detect_types", "check_same_thread", "cached_statements"}


def default_url() -> str:
    """$TUNER_STORAGE, else the URL in the file $TUNER_STORAGE_FILE names, else sqlite:///tuner.db.
    The file keeps a password out of the environment, where docker inspect and /proc show it."""
    if url := os.environ.get("TUNER_STORAGE", "").strip():  # a space or newline pasted with it is not part of a URL
        return url
    path = os.environ.get("TUNER_STORAGE_FILE")
    if not path:
        return DEFAULT_URL
    return read_secret_file(Path(path), "TUNER_STORAGE_FILE", "the storage URL, e.g. postgresql+psycopg://user:password@host/db")


def read_secret_file(path: Path, name: str, what: str) -> str:
    """The secret in ``path`` (surrounding whitespace and the final newline dropped), or a UserError
    naming the file by ``name`` (the option or variable that gave it) and saying ``what`` belongs in it."""
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {name} {path}: {getattr(e, 'strerror', None) or e}")
    if not secret:
        raise UserError(f"{name} {path} is empty; put {what} in it")
    return secret


def mask(url: str) -> str:
    """The URL with its password hidden, for every line we print."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy reads: hide what would be a password in one
        return re.sub(r"(^|://)([^/@:]*:)[^/]*@", r"\1\2***@", url)


def open_storage(url: str, heartbeat_interval: int = 0, grace_period: int = 60,
                 existing: bool = False, create: bool = True) -> optuna.storages.RDBStorage:
    """An RDBStorage set up for many concurrent worker processes, or a UserError saying why not.
    ``existing``: for commands that only read (or join) studies: a storage that holds none yet is
    an error, and nothing is created, neither an SQLite file nor tables. ``create`` False: an
    SQLite file that does not exist is an error (a health check must not make what it checks)."""
    example = "use e.g. sqlite:///tuner.db or postgresql+psycopg://user@host/db"
    try:
        parsed = make_url(url)
    except ValueError:  # SQLAlchemy reads the port as a number
        raise UserError(f"storage URL {mask(url)!r} has a port that is not a number; {example}")
    except Exception:
        why = "it has no scheme (such as sqlite:/// or postgresql+psycopg://)" if "://" not in url else "it cannot be read as one"
        raise UserError(f"storage URL {mask(url)!r} is not a database URL: {why}; {example}")
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if ignored := sorted(set(parsed.query) - SQLITE_DRIVER_ARGS):  # SQLAlchemy only warns, and uri=true names no path
            path = (parsed.database or "tuner.db").removeprefix("file:")
            raise UserError(f"storage URL {mask(url)!r} has {', '.join(ignored)} in its query, which tuner does not pass to "
                            f"SQLite: it opens the file by its path; write sqlite:///{path}")
        # Workers write at the same time: wait for the lock instead of failing at once, and let
        # readers (dashboard, status) read while a writer writes.
        engine_kwargs = {"connect_args": {"timeout": 120}}
        if parsed.database and parsed.database != ":memory:":
            if Path(parsed.database).is_dir():
                raise UserError(f"storage URL {mask(url)!r} names the folder {parsed.database}, not a database file; "
                                f"name a file in it, e.g. sqlite:///{Path(parsed.database) / 'tuner.db'}")
            if (existing or not create) and not Path(parsed.database).is_file():
                raise UserError(f"no study exists in {mask(url)} yet (the file {parsed.database} does not exist); "
                                "run tuner start-study first, or pass --storage")
            if not existing:
                _sqlite_wal(Path(parsed.database))
    elif backend == "postgresql":
        # ?tuner_pool=off (for a pooler such as PgBouncer in front of the server): no pool in the
        # process, so a connection is held only while a storage call runs and is then given back.
        pooled = parsed.query.get("tuner_pool", "on")
        if pooled not in ("on", "off"):
            raise UserError(f"storage URL {mask(url)!r}: tuner_pool must be on or off, got {pooled!r}")
        parsed = parsed.difference_update_query(["tuner_pool"])
        url = parsed.render_as_string(hide_password=False)
        # Many processes on a few hosts: keep each one's pool small, and survive server restarts.
        # A cut network link sends no reset: without keepalives and a TCP user timeout a query
        # would wait ~15 minutes for the kernel to give up, instead of failing into our retries.
        # The server gets the same settings for its end (``options``), so the session of a worker
        # cut off mid-transaction ends and releases its row locks instead of blocking the others.
        connect_args = {"connect_timeout": 10, "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
                        "keepalives_count": 3, "tcp_user_timeout": 30000, "options": SERVER_OPTIONS}
        pool = ({"poolclass": sqlalchemy.pool.NullPool} if pooled == "off" else
                {"pool_size": 2, "max_overflow": 2, "pool_pre_ping": True, "pool_recycle": 300})
        engine_kwargs = {"connect_args": connect_args, **pool}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    hb = {}
    if heartbeat_interval > 0:
        hb = {
            "heartbeat_interval": heartbeat_interval,
            "grace_period": grace_period,
            "heartbeat_stale_trial_callback": Requeue(max_retry=STALE_RETRIES),
        }
    try:
        if existing:
            _check_tables(url, engine_kwargs)
        return _rdb_storage(url, engine_kwargs, hb)
    except ImportError as e:
        hint = "PostgreSQL needs postgresql+psycopg://" if backend == "postgresql" else example
        raise UserError(f"the driver for storage {mask(url)} is not installed ({e}); {hint}")
    except sqlalchemy.exc.NoSuchModuleError:
        hint = "write postgresql+psycopg:// for PostgreSQL" if parsed.drivername == "postgres" else example
        raise UserError(f"storage URL {mask(url)!r} names a kind of database SQLAlchemy does not know "
                        f"({parsed.drivername!r}); {hint}")
    except (sqlalchemy.exc.SQLAlchemyError, OSError) as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise UserError(f"cannot open storage {mask(url)}: {_strip_password(reason, parsed)}; check the URL and that the database is running")


CREATING = ("already exists", "unique constraint failed: alembic_version", "duplicate key value")


def _rdb_storage(url: str, engine_kwargs: dict, hb: dict, tries: int = 8) -> optuna.storages.RDBStorage:
    """Optuna's storage, which creates its tables on first use without a lock: when two processes
    create them at once (two start-study on a new file), one fails on the other's tables or version
    row; by the next try the tables are there."""
    for attempt in range(tries):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **hb)
        except sqlalchemy.exc.SQLAlchemyError as e:
            if attempt == tries - 1 or not any(s in str(e).lower() for s in CREATING):
                raise
            time.sleep(0.2 + random.random() * 0.3)


def new_sqlite_file(url: str) -> bool:
    """Whether ``url`` names an SQLite file that does not exist yet (opening the storage makes it)."""
    try:
        parsed = make_url(url)
    except Exception:  # open_storage says what is wrong with it
        return False
    return parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:") and not Path(parsed.database).exists()


def _check_tables(url: str, engine_kwargs: dict) -> None:
    """RDBStorage creates Optuna's tables when they are missing: look before it does."""
    engine = sqlalchemy.create_engine(url, **engine_kwargs)
    try:
        with engine.connect() as conn:
            found = sqlalchemy.inspect(conn).has_table("studies")
    finally:
        engine.dispose()
    if not found:
        raise UserError(f"no study exists in {mask(url)} yet (it has no Optuna tables); run tuner start-study first, or pass --storage")


def _strip_password(text: str, parsed) -> str:
    return text.replace(parsed.password, "***") if parsed.password else text


def _sqlite_wal(path: Path) -> None:
    if not path.parent.exists():
        raise UserError(f"cannot open storage sqlite:///{path}: folder {path.parent} does not exist")
    for attempt in range(40):
        try:
            with contextlib.closing(sqlite3.connect(path, timeout=120)) as con:
                con.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            # Switching the journal waits for no busy timeout: another process creating the tables
            # of a new file holds its lock for a moment.
            if "locked" not in str(e) or attempt == 39:
                raise UserError(f"cannot open storage sqlite:///{path}: {e}; is it an SQLite database file?")
            time.sleep(0.1 + random.random() * 0.2)
        except sqlite3.Error as e:
            raise UserError(f"cannot open storage sqlite:///{path}: {e}; is it an SQLite database file?")


@contextlib.contextmanager
def study_lock(storage: optuna.storages.RDBStorage, study_name: str):
    """Serialises "count the trials, then ask for one" across all workers of a study, on any host,
    so a study ends with exactly n_trials finished trials instead of a few more."""
    url = storage.engine.url
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        with open(f"{url.database}.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield
    elif url.get_backend_name() == "postgresql":
        key = zlib.crc32(study_name.encode())
        with _advisory_lock(storage.engine, key) as conn:
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
    else:
        yield


@contextlib.contextmanager
def _advisory_lock(engine: sqlalchemy.Engine, key: int):
    """A connection holding PostgreSQL advisory lock ``key``. Without a pool in the process
    (tuner_pool=off, a pooler in front), a waiter must not sit on a server connection: behind a
    pooler with fewer server connections than waiters, the holder could then get none and
    everyone would wait. So it tries, gives the connection back, and tries again."""
    if not isinstance(engine.pool, sqlalchemy.pool.NullPool):
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            conn.commit()
            yield conn
        return
    delay = 0.01
    while True:
        with engine.connect() as conn:
            got = conn.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
            conn.commit()
            if got:
                yield conn
                return
        time.sleep(random.uniform(0, delay))
        delay = min(delay * 2, 0.5)
