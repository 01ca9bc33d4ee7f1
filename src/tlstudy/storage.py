"""Opening the Optuna storage a study lives in.

`--storage` takes a SQLAlchemy URL (sqlite:///results/optuna.db, postgresql://...,
mysql://...) or an Optuna journal file (a path ending in .log, or journal:PATH).

- SQLite gets WAL mode and a busy timeout, so that optuna-dashboard can read the
  file while a study writes to it (optuna-dashboard issue 545, "database is locked").
- PostgreSQL goes through psycopg 3 (`pip install tlstudy[postgres]`); a plain
  postgresql:// URL is taken to mean it when psycopg2 is not installed.
- SQL storages record heartbeats (`heartbeat` seconds): a RUNNING trial whose driver
  has not beaten for GRACE_BEATS heartbeats is abandoned, so a driver can tell a
  crashed driver's trials from those of a live one sharing the study. Journal files
  have no heartbeats: one driver at a time.
- Passwords: whatever shows, stores or writes a URL uses `display_url`, which hides the
  password. Better still, keep it out of the URL: PostgreSQL's client reads it from
  PGPASSWORD or ~/.pgpass.

Optuna and SQLAlchemy are imported when a storage is opened, not with this module: the
command line checks a storage path and shows URLs before its heavy imports.
"""
import importlib.util
import os
import re
import sqlite3
import time
import warnings
from pathlib import Path
from urllib.parse import quote

from tlstudy.errors import UserError

SQLITE_TIMEOUT_S = 60
GRACE_BEATS = 3


def default_url(results_dir):
    return f"sqlite:///{Path(results_dir) / 'optuna.db'}"


def is_journal(url):
    return url.startswith("journal:") or url.endswith(".log")


# user:password@ in a URL that SQLAlchemy cannot parse
_USERINFO = re.compile(r"(://[^/:@]*:)[^/]*@")


def display_url(url):
    """`url` as it may be printed, stored or written: a SQLAlchemy URL with its password as ***,
    a journal file's path as it is."""
    if not url or is_journal(url) or "@" not in url:  # no user info, nothing to hide
        return url
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy parses: hide whatever sits between user: and @
        return _USERINFO.sub(r"\1***@", url)


def password(url):
    """The password in a storage URL, or None."""
    if not url or is_journal(url) or "@" not in url:
        return None
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).password
    except Exception:
        m = re.search(r"://[^/:@]*:([^/]*)@", url)
        return m.group(1) if m else None


def scrub(text, url):
    """`text` (an error message, a command line) with `url` and its password hidden."""
    text = str(text)
    if not url:
        return text
    hole = "\0url\0"
    text = text.replace(url, hole)
    secret = password(url)
    for form in {secret, quote(secret or "", safe="")} - {None, ""}:
        text = text.replace(form, "***")
    return text.replace(hole, display_url(url))


def check_url(url):
    """Catch a storage URL that cannot work before anything heavy loads: a file storage whose
    folder cannot be made, a URL SQLAlchemy cannot parse or has no dialect for. Opens nothing."""
    if is_journal(url) or url.startswith("sqlite:///"):
        p = Path(url.removeprefix("journal:").removeprefix("sqlite:///")).resolve().parent
        while not p.exists():
            p = p.parent
        if not p.is_dir() or not os.access(p, os.W_OK):
            raise UserError(f"cannot create the folder for storage {display_url(url)}: {p} is not a writable folder")
        return
    from sqlalchemy.engine import make_url

    try:
        make_url(url).get_dialect()
    except Exception as e:  # ArgumentError (not a URL), NoSuchModuleError (no such dialect)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(scrub(f"cannot open storage {url}: {msg}", url)) from None


def open_storage(url, heartbeat=None):
    """An Optuna storage object for `url`: OptunaSearch takes objects, never URL strings.
    `heartbeat`: seconds between the heartbeats of running trials (SQL storages only)."""
    if is_journal(url):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        path = Path(url.removeprefix("journal:"))
        _check_parent(path, url)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        _check_parent(Path(url.removeprefix("sqlite:///")), url)
        engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    sa_url = url
    if url.startswith(("postgresql://", "postgres://")) and not importlib.util.find_spec("psycopg2"):
        sa_url = "postgresql+psycopg://" + url.split("://", 1)[1]
    beats = dict(heartbeat_interval=int(heartbeat), grace_period=GRACE_BEATS * int(heartbeat)) if heartbeat else {}
    try:
        return _rdb_storage(sa_url, engine_kwargs, beats)
    except ModuleNotFoundError as e:
        hint = " (pip install 'tlstudy[postgres]')" if "psycopg" in str(e) else ""
        raise UserError(scrub(f"cannot open storage {url}: no driver: {e}{hint}", url)) from None
    except Exception as e:  # SQLAlchemy's errors for bad URLs, refused connections, bad passwords
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(scrub(f"cannot open storage {url}: {scrub(msg, sa_url)}", url)) from None


def _rdb_storage(sa_url, engine_kwargs, beats, tries=5):
    # Two processes opening a new database at once (a driver and optuna-dashboard, or two
    # drivers) both create Optuna's tables and stamp their version, and the slower one fails
    # with "table ... already exists" or a duplicate version row; on a second look the
    # schema is complete.
    from optuna.exceptions import ExperimentalWarning
    from optuna.storages import RDBStorage
    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(tries):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna since 2.9; they are tested here
                warnings.simplefilter("ignore", ExperimentalWarning)
                return RDBStorage(sa_url, engine_kwargs=engine_kwargs, **beats)
        except (OperationalError, IntegrityError) as e:
            schema_race = "already exists" in str(e) or "alembic_version" in str(e)
            if not schema_race or attempt == tries - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def storage_exists(url):
    """False only for a file storage (SQLite, journal) whose file is missing: reading must not create it."""
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///")).is_file()
    if is_journal(url):
        return Path(url.removeprefix("journal:")).is_file()
    return True


def enable_wal(url):
    """Switch a SQLite storage to WAL mode, so readers (optuna-dashboard) and the writing
    study do not lock each other out. WAL is a property of the file and rewrites its
    header: call this only once the run is known to go ahead, so that a refused run
    leaves the file byte-for-byte as it was."""
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///"), timeout=SQLITE_TIMEOUT_S) as con:
            con.execute("PRAGMA journal_mode=WAL")


def _check_parent(path, url):
    if not path.parent.is_dir():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the folder for storage {display_url(url)}: {e.strerror}") from None
