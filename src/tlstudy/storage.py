"""Opening the Optuna storage a study lives in.

`--storage` takes a SQLAlchemy URL (sqlite:///results/optuna.db, postgresql://...,
mysql://...) or an Optuna journal file (a path ending in .log, or journal:PATH).
SQLite gets WAL mode and a busy timeout, so that optuna-dashboard can read the
file while a study writes to it (optuna-dashboard issue 545, "database is locked").
"""
import sqlite3
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

from tlstudy.errors import UserError

SQLITE_TIMEOUT_S = 60


def default_url(results_dir):
    return f"sqlite:///{Path(results_dir) / 'optuna.db'}"


def open_storage(url):
    """An Optuna storage object for `url`: OptunaSearch takes objects, never URL strings."""
    if url.startswith("journal:") or url.endswith(".log"):
        path = Path(url.removeprefix("journal:"))
        _check_parent(path, url)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        _check_parent(path, url)
        try:
            # WAL is a property of the database file: set it once, before Optuna connects.
            with sqlite3.connect(path, timeout=SQLITE_TIMEOUT_S) as con:
                con.execute("PRAGMA journal_mode=WAL")
        except sqlite3.DatabaseError as e:
            raise UserError(f"storage {url} is not a usable SQLite database ({e})") from None
        engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    try:
        return RDBStorage(url, engine_kwargs=engine_kwargs)
    except Exception as e:  # SQLAlchemy's errors for bad URLs, missing drivers, refused connections
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot open storage {url}: {msg}") from None


def _check_parent(path, url):
    if not path.parent.is_dir():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the folder for storage {url}: {e.strerror}") from None


def study_summaries(storage):
    return optuna.get_all_study_summaries(storage, include_best_trial=False)
