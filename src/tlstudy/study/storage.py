"""Where a study is kept: its storage, the study in it, and the heartbeats of its trials.

`--storage` takes a SQLAlchemy URL (sqlite:///..., postgresql://..., mysql://...) or an Optuna journal
file (*.log). SQLite runs in WAL mode with a busy timeout, so optuna-dashboard reads while a study
writes (optuna-dashboard issue 545). Whatever shows or stores a URL uses `display_url`, which hides
the password (better: PGPASSWORD or ~/.pgpass). `open_study` creates or reopens the study and refuses
one run with other settings (tlstudy.study.design.open_study); `stored_attrs` reads a stored
study's record without its trials, so the command line refuses before its heavy imports. A driver
beats for each trial it runs (SQL storages; Optuna's own heartbeat lives inside Study.optimize, and
Tune drives ask and tell); `resolve_abandoned` fails what a dead driver left RUNNING (unbeaten for
GRACE_BEATS beats; without heartbeats, a journal file, every RUNNING trial). Drivers sharing a study
take its work one at a time (`work_lock`). Optuna and SQLAlchemy load when a storage opens, not with
this module.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import re
import sqlite3
import threading
import time
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tlstudy.errors import UserError
from tlstudy.names import FAIL_REASON

SQLITE_TIMEOUT_S = 60
GRACE_BEATS = 3
ABANDONED = "left RUNNING by a driver that stopped"


def check_writable(folder: str | Path, what: str) -> None:
    """Fail early, creating nothing, when `folder` could not be made or written ("cannot WHAT")."""
    p = Path(folder).resolve()
    while not p.exists():
        p = p.parent
    if not p.is_dir() or not os.access(p, os.W_OK):
        raise UserError(f"cannot {what}: {p} is not a writable folder")


def default_url(results_dir: str | Path) -> str:
    return f"sqlite:///{Path(results_dir) / 'optuna.db'}"


def is_journal(url: str) -> bool:
    return url.startswith("journal:") or url.endswith(".log")


# user:password@ in a URL that SQLAlchemy cannot parse
_USERINFO = re.compile(r"(://[^/:@]*:)[^/]*@")


def display_url(url: str | None) -> str | None:
    """`url` as it may be printed, stored or written: a SQLAlchemy URL with its password as ***,
    a journal file's path as it is."""
    if not url or is_journal(url) or "@" not in url:  # no user info, nothing to hide
        return url
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy parses: hide whatever sits between user: and @
        return _USERINFO.sub(r"\1***@", url)


def password(url: str | None) -> str | None:
    """The password in a storage URL, or None."""
    if not url or is_journal(url) or "@" not in url:
        return None
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).password
    except Exception:
        m = re.search(r"://[^/:@]*:([^/]*)@", url)
        return m.group(1) if m else None


def scrub(text: object, url: str | None) -> str:
    """`text` (an error message, a command line) with `url` and its password hidden."""
    text = str(text)
    if not url:
        return text
    hole = "\0url\0"
    text = text.replace(url, hole)
    secret = password(url) or ""
    for form in {secret, quote(secret, safe="")} - {""}:
        text = text.replace(form, "***")
    return text.replace(hole, display_url(url) or "")


def file_of(url: str) -> Path | None:
    """The file of a file storage (SQLite, a journal), or None."""
    if url.startswith("sqlite:///") or is_journal(url):
        return Path(url.removeprefix("journal:").removeprefix("sqlite:///"))
    return None


def check_url(url: str) -> None:
    """Catch a storage URL that cannot work before anything heavy loads: a file storage whose
    folder cannot be made, a URL SQLAlchemy cannot parse or has no dialect for. Opens nothing."""
    if (path := file_of(url)) is not None:
        return check_writable(path.parent, f"create the folder for storage {display_url(url)}")
    from sqlalchemy.engine import make_url

    try:
        make_url(url).get_dialect()
    except Exception as e:  # ArgumentError (not a URL), NoSuchModuleError (no such dialect)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(scrub(f"cannot open storage {url}: {msg}", url)) from None


def open_storage(url: str, heartbeat: int | None = None) -> Any:
    """An Optuna storage object for `url`: OptunaSearch takes objects, never URL strings.
    `heartbeat`: seconds between the heartbeats of running trials (SQL storages only)."""
    if (path := file_of(url)) is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the folder for storage {display_url(url)}: {e.strerror}") from None
    if is_journal(url):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        return JournalStorage(JournalFileBackend(str(path)))
    engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if path else {"pool_pre_ping": True}
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


def _rdb_storage(sa_url: str, engine_kwargs: dict, beats: dict, tries: int = 5) -> Any:
    # Two processes opening a new database at once both create Optuna's tables and stamp their
    # version: the slower one fails ("already exists", alembic_version); a second look finds it all.
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


@contextmanager
def work_lock(url: str, storage: Any, study_name: str) -> Iterator[None]:
    """Held by a driver from reading what the study still lacks to asking Optuna for it. Without it,
    two drivers sharing a study can both see a cell one trial short and both enqueue that trial
    (Optuna has no conditional insert). A file storage locks a file beside it (one machine, as
    SQLite and a local journal need) with a blocking flock: the kernel wakes a waiting driver as soon
    as the lock is free, and frees it when its holder dies. PostgreSQL and MySQL take a lock on the
    server, for this study, which a dead driver's connection gives back. A study in memory (no URL),
    or in a database Optuna is not tested on, gets no lock: run one driver at a time there."""
    if not url:
        yield
        return
    if (path := file_of(url)) is not None:
        with open(f"{path}.tlstudy-lock", "a") as f:  # not .lock: a journal's own lock is <file>.lock
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
        return
    from sqlalchemy import text

    key = zlib.crc32(f"tlstudy:{study_name}".encode())
    dialect = storage.engine.dialect.name  # an RDBStorage (only file storages are journals)
    if dialect == "postgresql":
        with storage.engine.begin() as con:  # released when this transaction ends
            con.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
            yield
    elif dialect in ("mysql", "mariadb"):
        with storage.engine.connect() as con:
            con.execute(text("SELECT GET_LOCK(:k, -1)"), {"k": f"tlstudy-{key}"})
            try:
                yield
            finally:
                con.execute(text("SELECT RELEASE_LOCK(:k)"), {"k": f"tlstudy-{key}"})
    else:
        yield


def storage_exists(url: str) -> bool:
    """False only for a file storage (SQLite, journal) whose file is missing: reading must not create it."""
    path = file_of(url)
    return path is None or path.is_file()


def enable_wal(url: str) -> None:
    """Switch a SQLite storage to WAL mode, so readers (optuna-dashboard) and the writing
    study do not lock each other out. WAL is a property of the file and rewrites its
    header: call this only once the run is known to go ahead, so that a refused run
    leaves the file byte-for-byte as it was."""
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///"), timeout=SQLITE_TIMEOUT_S) as con:
            con.execute("PRAGMA journal_mode=WAL")


# ---------------------------------------------------------------- the study in it


def stored_attrs(url: str, name: str) -> dict[str, Any] | None:
    """The user attributes of study `name` in the storage at `url`, or None when there is none;
    reads no trial and writes nothing."""
    if not storage_exists(url):
        return None
    storage = open_storage(url)
    try:
        return storage.get_study_user_attrs(storage.get_study_id_from_name(name))
    except KeyError:  # Optuna's answer for a study name it does not hold
        return None


# ---------------------------------------------------------------- heartbeats


def interval(storage: Any) -> int | None:
    """Seconds between heartbeats, or None for a storage without them (a journal file, --heartbeat 0)."""
    get = getattr(storage, "get_heartbeat_interval", None)  # RDBStorage has it, a JournalStorage not
    return get() if get else None


def trial_ids(storage: Any, study_name: str, numbers: list[int]) -> list[int]:
    """The storage's ids of the study's trials `numbers`."""
    study_id = storage.get_study_id_from_name(study_name)
    return [storage.get_trial_id_from_study_id_trial_number(study_id, n) for n in numbers]


class Heartbeats:
    """Beats for the trials this driver runs, in a daemon thread, every `interval(storage)`
    seconds; nothing at all for a storage without heartbeats."""

    def __init__(self, storage: Any) -> None:
        self.storage, self.interval = storage, interval(storage)
        self.beating: dict[int, int] = {}  # trial number -> trial id, of the trials to beat
        self.stop_event: threading.Event | None = None  # the thread's, once it runs

    def add(self, study_name: str, number: int) -> None:
        """Beat trial `number` now, and every interval until `discard(number)`."""
        if not self.interval:
            return
        [trial_id] = trial_ids(self.storage, study_name, [number])
        self.storage.record_heartbeat(trial_id)
        self.beating[number] = trial_id
        if self.stop_event is None:
            self.stop_event = threading.Event()
            threading.Thread(target=self.beat_until, args=(self.stop_event,), daemon=True).start()

    def discard(self, number: int) -> None:
        self.beating.pop(number, None)

    def stop(self) -> None:
        if self.stop_event is not None:
            self.stop_event.set()

    def beat_until(self, stop: threading.Event) -> None:
        """The thread's loop: beat every trial in `beating`, every interval, until `stop` is set."""
        while not stop.wait(self.interval):
            for number, trial_id in list(self.beating.items()):
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception as e:  # a busy database: the grace period covers a missed beat
                    warnings.warn(f"heartbeat of trial {number} not recorded: {e}")


def resolve_abandoned(study: Any, storage: Any) -> int:
    """Mark FAIL the trials a crashed or killed driver left RUNNING: they will never report
    again. Returns how many were failed."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    running = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    stale = trial_ids(storage, study.study_name, running)
    if stale and interval(storage):
        # A driver killed between asking for a trial and its first heartbeat left a trial that
        # would never turn stale: beat each once, then see which their driver keeps beating.
        for trial_id in stale:
            storage.record_heartbeat(trial_id)
        print(
            f"{len(stale)} trials RUNNING: waiting up to {storage.grace_period} s for their driver's heartbeat",
            flush=True,
        )
        deadline = time.time() + storage.grace_period + 2  # the database clock counts whole seconds
        while time.time() < deadline and any(storage.get_trial(i).state == TrialState.RUNNING for i in stale):
            time.sleep(1)
        # Private, for want of a public way: Optuna's public optuna.storages.fail_stale_trials fails
        # these trials first and calls back after, and a finished trial's user attributes are
        # read-only (UpdateFinishedTrialError), so its fail_reason could not be recorded. Pinned
        # by tests/test_heartbeats.py.
        stale = storage._get_stale_trial_ids(storage.get_study_id_from_name(study.study_name))
    failed = 0
    for trial_id in stale:
        try:
            storage.set_trial_user_attr(trial_id, FAIL_REASON, ABANDONED)
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
            failed += 1
        except UpdateFinishedTrialError:
            pass  # its driver, or another one, resolved it meanwhile
    return failed


def fingerprint(design: dict[str, Any]) -> str:
    """A short hash of a comparability dict, stored with the study."""
    return hashlib.sha1(json.dumps(design, sort_keys=True).encode()).hexdigest()[:16]


def differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """'key: old -> new' for every leaf that differs between two comparability dicts."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {json.dumps(a)[:60]} -> {json.dumps(b)[:60]}")
    return out
