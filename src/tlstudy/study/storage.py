"""Where a study is kept: its storage, the study in it, and the heartbeats of its trials.

- `--storage` takes a SQLAlchemy URL (sqlite:///results/optuna.db, postgresql://..., mysql://...)
  or an Optuna journal file (a path ending in .log, or journal:PATH). SQLite gets WAL mode and a
  busy timeout, so that optuna-dashboard can read the file while a study writes it
  (optuna-dashboard issue 545, "database is locked"). PostgreSQL goes through psycopg 3.
- Passwords: whatever shows, stores or writes a URL uses `display_url`, which hides the password.
  Better still, keep it out of the URL: PostgreSQL's client reads PGPASSWORD or ~/.pgpass.
- The study (`open_study`) is created or reopened, and refused, with nothing written, when its
  stored trials would not be comparable with this run's (`check_comparable`, on
  tlstudy.settings.StudySettings.comparability). `stored_attrs` reads a stored study's record
  without loading its trials, so that the command line refuses a rerun before its heavy imports.
- Heartbeats: a driver records one for each trial it runs, every `--heartbeat` seconds (SQL
  storages; Optuna's own heartbeat thread runs only inside Study.optimize, and Ray Tune drives
  the study through ask and tell). A starting driver fails what earlier drivers left RUNNING
  (`resolve_abandoned`): with heartbeats, the trials nobody beats through GRACE_BEATS beats, so
  another live driver's trials are left alone; without them (a journal file) every RUNNING trial,
  so one driver at a time. Each is marked FAIL with its fail_reason ABANDONED; its cell runs again.

Optuna and SQLAlchemy are imported when a storage is opened, not with this module: the command
line checks a storage path and shows URLs before its heavy imports.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sqlite3
import threading
import time
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tlstudy.errors import UserError
from tlstudy.names import DESIGN, FAIL_REASON, FINGERPRINT

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
    secret = password(url)
    for form in {secret, quote(secret or "", safe="")} - {None, ""}:
        text = text.replace(form, "***")
    return text.replace(hole, display_url(url))


def check_url(url: str) -> None:
    """Catch a storage URL that cannot work before anything heavy loads: a file storage whose
    folder cannot be made, a URL SQLAlchemy cannot parse or has no dialect for. Opens nothing."""
    if is_journal(url) or url.startswith("sqlite:///"):
        path = Path(url.removeprefix("journal:").removeprefix("sqlite:///"))
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


def storage_exists(url: str) -> bool:
    """False only for a file storage (SQLite, journal) whose file is missing: reading must not create it."""
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///")).is_file()
    if is_journal(url):
        return Path(url.removeprefix("journal:")).is_file()
    return True


def enable_wal(url: str) -> None:
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


def check_comparable(attrs: dict[str, Any] | None, design: dict[str, Any], name: str, url: str) -> None:
    """Refuse, with one line naming what differs, a stored study run with other settings."""
    from tlstudy.settings import differences, fingerprint

    stored = (attrs or {}).get(FINGERPRINT)
    if stored and stored != fingerprint(design):
        diff = differences(attrs.get(DESIGN, {}), design)
        raise UserError(
            f"study {name!r} in {display_url(url)} was run with a different space or settings"
            f"{' (' + '; '.join(diff[:4]) + ')' if diff else ''}; its trials would not be comparable: "
            "pass --study-name NEW to keep both, or --new-study to replace it"
        )


def open_study(name: str, storage: Any, url: str, design: dict[str, Any], sampler: Any, new: bool = False) -> Any:
    """The study, created or reopened (deleted first when `new`); refused, nothing written, when it
    was run with anything else."""
    import optuna

    from tlstudy.names import METRIC

    exists = name in optuna.get_all_study_names(storage)
    if exists and new:
        optuna.delete_study(study_name=name, storage=storage)
    if exists and not new:
        check_comparable(storage.get_study_user_attrs(storage.get_study_id_from_name(name)), design, name, url)
    study = optuna.create_study(
        study_name=name, storage=storage, sampler=sampler, direction="minimize", load_if_exists=True
    )
    if FINGERPRINT not in study.user_attrs:
        with warnings.catch_warnings():  # "experimental" since Optuna 3.2; optuna-dashboard reads it
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([METRIC])
    return study


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

    def __init__(self, storage):
        self.storage = storage
        self.interval = interval(storage)
        self.beating = {}  # trial number -> trial id, of the trials to beat
        self.stop_event = None  # the thread's, once it runs

    def add(self, study_name, number):
        """Beat trial `number` now, and every interval until `discard(number)`."""
        if not self.interval:
            return
        [trial_id] = trial_ids(self.storage, study_name, [number])
        self.storage.record_heartbeat(trial_id)
        self.beating[number] = trial_id
        if self.stop_event is None:
            self.stop_event = threading.Event()
            threading.Thread(target=self.beat_until, args=(self.stop_event,), daemon=True).start()

    def discard(self, number):
        self.beating.pop(number, None)

    def stop(self):
        if self.stop_event is not None:
            self.stop_event.set()

    def beat_until(self, stop):
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
