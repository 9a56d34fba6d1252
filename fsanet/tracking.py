"""MLflow tracking that never costs a training run.

* Store: ``tracking.uri`` > the study marker's URI > ``$MLFLOW_TRACKING_URI`` > ``sqlite:///mlflow.db``
  at the project root (the nearest folder above the working directory holding ``pyproject.toml``,
  ``Snakefile`` or ``.git``; else the working directory). Relative SQLite paths are made absolute
  against that root, and experiments created here keep their artifacts in ``mlruns/`` beside the db.
* Creating a store: a local SQLite store is opened, and its experiment created, under a file lock
  (``<db>-init.lock`` beside it), so that many processes starting on a fresh store do not race
  through MLflow's schema migration. A new store is made only by ``fsanet mlflow init`` or by a
  training run without a study marker; a store that a marker or an evaluated training run names
  must exist (:class:`MissingStoreError`), so that a deleted db is reported instead of replaced.
* Studies: :func:`init_study` (``fsanet mlflow init``) creates the store, the experiment and the
  study's parent run once, and writes a marker JSON with the parent's id; each training or
  evaluation process reads the marker and starts a child run (``mlflow.parentRunId``).
* Credentials: user and password in an HTTP(S) URI are handed to MLflow through
  ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` (set for this process) and removed from
  the URI it uses. Every URI that is logged or written shows ``user:***@`` instead
  (:func:`redact`); reading such a URI back, ``***`` means "the password is in the environment".
* Resilience: every MLflow call is retried with exponential backoff, with MLflow's, SQLAlchemy's
  and alembic's own log output held back (our one-line messages say what failed). If a call still
  fails, or the SQLite file disappears, the run goes offline with one warning: params, metrics, tags
  and artifacts are kept under ``<out_dir>/mlflow_offline/`` and :func:`sync_offline`
  (``fsanet mlflow sync``) uploads them later. Metrics are buffered and sent every
  ``flush_interval`` iterations or on :meth:`Tracker.flush`.
* Resumed runs: a (key, step) already in the store, or already logged by this tracker, is not
  logged again (:meth:`Tracker.load_logged_steps`), so a run interrupted and resumed any number of
  times has each point once; an offline copy left by an earlier segment of the same run is uploaded
  into it (or kept and extended, if the store is still unusable).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, TypeVar
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from fsanet.config import flatten
from fsanet.io import atomic_path, read_json, write_json

__all__ = [
    "OFFLINE_DIR",
    "MissingStoreError",
    "Tracker",
    "TrackingError",
    "check_store",
    "flatten",
    "init_study",
    "project_root",
    "read_marker",
    "redact",
    "redact_config",
    "relocate_store",
    "resolve_uri",
    "sanitize_key",
    "split_credentials",
    "sync_offline",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

OFFLINE_DIR = "mlflow_offline"
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
STORE_LOCK_TIMEOUT_S = 300.0
REDACTED = "***"
_BAD_KEY_CHARS = re.compile(r"[^/\w.\- ]")
# scheme://user:password@ in free text (the user-info part ends at the last "@" before the path)
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<userinfo>[^/\s?#'\"]+)@")
_SECRET_QUERY = re.compile(
    r"(?i)\b(?P<name>password|passwd|pwd|token|secret|api[_-]?key)=(?P<value>[^&\s'\"]+)"
)
_NOISY_LOGGERS = ("mlflow", "sqlalchemy", "alembic")
_HTTP_SCHEMES = ("http", "https")
_TERMINAL = ("FINISHED", "FAILED", "KILLED")
_MIN_SECRET = 6  # shorter passwords are not searched for in free text (they would match ordinary words)
_secrets: set[str] = set()  # passwords seen in URIs of this process: scrubbed from every message


class TrackingError(RuntimeError):
    """The tracking store could not be reached or initialised (after retries)."""


class MissingStoreError(FileNotFoundError):
    """A local store that a study marker or a training run names does not exist (it is not re-created)."""


def _quiet_environment(http_timeout_s: int) -> None:
    """Telemetry off, and MLflow's own HTTP retries short: ours (with the offline fallback) take over."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(http_timeout_s))


@contextlib.contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """Hold back MLflow's, SQLAlchemy's and alembic's log records and warnings during our calls.

    A failing store makes them log every error with a traceback, on their own handlers (so not even
    ``fsanet -q`` silences them); our retry and offline messages report the same failure in one line.
    With debug logging on (``fsanet -vv``) nothing is held back.
    """
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    import mlflow  # noqa: F401  (importing configures MLflow's logger: do it before the levels are saved)

    saved = [(logger, logger.level) for logger in map(logging.getLogger, _NOISY_LOGGERS)]
    for logger, _ in saved:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in reversed(saved):
            logger.setLevel(level)


# --------------------------------------------------------------------------------------------
# Credentials
# --------------------------------------------------------------------------------------------
def _remember_secret(secret: Optional[str]) -> None:
    if secret and secret != REDACTED and len(secret) >= _MIN_SECRET:
        _secrets.update({secret, _quote(secret)})


def _quote(text: str) -> str:
    return quote(text, safe="")


def redact(text: str) -> str:
    """``text`` without secrets: ``user:password@`` in URIs becomes ``user:***@`` (a lone ``token@``
    becomes ``***@``), ``password=``/``token=`` query values become ``***``, and passwords seen in a
    URI or in ``$MLFLOW_TRACKING_PASSWORD`` are replaced wherever they appear.

    Args:
        text: a URI, a log message, an error text.
    """
    text = str(text)
    secrets = set(_secrets)
    env_password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if env_password and len(env_password) >= _MIN_SECRET:
        secrets.update({env_password, _quote(env_password)})
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, REDACTED)

    def userinfo(m: re.Match[str]) -> str:
        user, sep, _ = m.group("userinfo").partition(":")
        return f"{m.group('scheme')}{user}:{REDACTED}@" if sep else f"{m.group('scheme')}{REDACTED}@"

    text = _USERINFO.sub(userinfo, text)
    return _SECRET_QUERY.sub(lambda m: f"{m.group('name')}={REDACTED}", text)


def redact_config(tree: Any) -> Any:
    """A copy of a resolved config (nested dicts/lists) whose strings are :func:`redact`-ed, so that
    ``tracking.uri=http://user:pw@host`` is stored, logged and checkpointed as ``http://user:***@host``."""
    if isinstance(tree, Mapping):
        return {k: redact_config(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [redact_config(v) for v in tree]
    if isinstance(tree, str) and ("@" in tree or "=" in tree):
        return redact(tree)
    return tree


def split_credentials(uri: str) -> tuple[str, Optional[str], Optional[str]]:
    """``(uri without user info, user, password)``; ``***`` (a redacted value) counts as absent.

    Args:
        uri: a tracking URI such as ``https://user:pw@host:5000``.
    """
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri, None, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, sep, password = userinfo.partition(":")
    clean = urlunsplit(parts._replace(netloc=hostport))
    user_s = unquote(user) if user and user != REDACTED else None
    password_s = unquote(password) if sep and password and password != REDACTED else None
    return clean, user_s, password_s


def _mlflow_uri(uri: str) -> str:
    """The URI to hand MLflow; credentials of an HTTP(S) URI move to MLflow's environment variables.

    For ``http(s)://user:pw@host`` this sets ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``
    for this process (and its children) and returns ``http(s)://host``. A redacted URI (``user:***@``,
    read back from a file) keeps whatever password the environment holds; when there is none and
    ``$MLFLOW_TRACKING_URI`` carries credentials for the same host, those are used. A database URI
    (``postgresql://user:pw@…``) keeps its credentials: the database driver needs them there.
    """
    scheme = urlsplit(uri).scheme.lower()
    clean, user, password = split_credentials(uri)
    _remember_secret(password)
    env_uri = os.environ.get("MLFLOW_TRACKING_URI")
    if env_uri and "@" in env_uri:
        env_clean, env_user, env_password = split_credentials(env_uri)
        _remember_secret(env_password)
        if urlsplit(env_uri).scheme.lower() in _HTTP_SCHEMES:
            os.environ["MLFLOW_TRACKING_URI"] = env_clean  # the credentials now live in the variables below
            if env_clean == clean and password is None and env_password is not None:
                user, password = user or env_user, env_password
    if scheme not in _HTTP_SCHEMES:
        return uri
    if password is not None:
        os.environ["MLFLOW_TRACKING_PASSWORD"] = password
        if user is not None:
            os.environ["MLFLOW_TRACKING_USERNAME"] = user
    elif user is not None:
        os.environ.setdefault("MLFLOW_TRACKING_USERNAME", user)
    return clean


def _one_line(err: BaseException, limit: int = 240) -> str:
    """``Type: first telling line of the message``, redacted and cut to ``limit`` characters
    (SQLAlchemy puts a remark about autoflush before the database's own error, and links after it)."""
    text = [
        line
        for line in str(err).strip().splitlines()
        if line.strip() and not line.startswith(("(raised as a result of", "(Background on this error"))
    ]
    line = redact(f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": "))
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# --------------------------------------------------------------------------------------------
# Names, URIs, flattening
# --------------------------------------------------------------------------------------------
def project_root(start: str | Path | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: cwd) with pyproject.toml, Snakefile or .git."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if any((folder / marker).exists() for marker in ("pyproject.toml", "Snakefile", ".git")):
            return folder
    return here


def _absolute_sqlite(uri: str, root: Path) -> str:
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return uri
    path = uri[len(prefix) :]
    if path.startswith("/") or path == ":memory:":
        return uri
    return prefix + str((root / path).resolve())


def resolve_uri(uri: Optional[str] = None, marker_uri: Optional[str] = None, root: Path | None = None) -> str:
    """The tracking URI by precedence: explicit > marker > ``$MLFLOW_TRACKING_URI`` > project sqlite db."""
    root = root or project_root()
    chosen = uri or marker_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    return _absolute_sqlite(chosen, root)


def sqlite_path(uri: str) -> Optional[Path]:
    """The db file of a local ``sqlite:///`` store (None for other stores and in-memory SQLite)."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    path = uri[len(prefix) :].split("?", 1)[0]
    return None if not path or path == ":memory:" else Path(path)


def artifact_root(uri: str) -> Optional[str]:
    """``file://…/mlruns`` beside a local SQLite db; None (the server decides) otherwise."""
    db = sqlite_path(uri)
    return None if db is None else (db.parent / "mlruns").as_uri()


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Hold ``<db>-init.lock`` beside a local SQLite store (nothing for other stores): opening a fresh
    store runs MLflow's schema migration, which concurrent processes must not run together."""
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    from filelock import FileLock

    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(db.with_name(db.name + "-init.lock")), timeout=STORE_LOCK_TIMEOUT_S):
        yield


def _open_client(uri: str, display_uri: str) -> Any:
    """An ``MlflowClient`` for ``uri``; call it under :func:`_store_lock` (it may create the store)."""
    from mlflow import MlflowClient

    db = sqlite_path(uri)
    created = db is not None and not db.exists()
    client = MlflowClient(tracking_uri=uri)
    if created:
        log.info("MLflow: created the store %s", display_uri)
    return client


def sanitize_key(key: str) -> str:
    """An MLflow-valid metric/param name: unsupported characters become ``_``."""
    key = _BAD_KEY_CHARS.sub("_", key)
    key = re.sub(r"/{2,}", "/", key).strip("/") or "_"
    return "/".join(part if part not in (".", "..") else "_" for part in key.split("/"))


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = redact(text)
    if len(text) > MAX_PARAM_VALUE:
        log.warning(
            "MLflow param value of %d chars cut to %d (the full config is an artifact)",
            len(text),
            MAX_PARAM_VALUE,
        )
        text = text[: MAX_PARAM_VALUE - 3] + "..."
    return text


# --------------------------------------------------------------------------------------------
# Study marker
# --------------------------------------------------------------------------------------------
def read_marker(path: str | Path) -> dict[str, Any]:
    """The JSON written by :func:`init_study`, checked for the keys training needs."""
    data = read_json(path)
    missing = [k for k in ("tracking_uri", "experiment", "parent_run_id") if k not in data]
    if missing:
        raise ValueError(f"{path}: not an `fsanet mlflow init` marker (missing {', '.join(missing)})")
    return data


def _retry(fn: Callable[[], T], what: str, retries: int, backoff_s: float) -> T:
    """Call ``fn``; on failure wait ``backoff_s · 2^k`` and try again, ``retries`` attempts in all."""
    attempts = max(retries, 1)
    for attempt in range(attempts):
        try:
            with _quiet_mlflow():
                return fn()
        except Exception as err:  # store locked, server down, migration race: all worth a retry
            if attempt == attempts - 1:
                raise
            delay = backoff_s * 2**attempt
            log.debug("MLflow %s failed (%s); retrying in %.2fs", what, _one_line(err), delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _ensure_experiment(client: Any, name: str, uri: str) -> str:
    """The id of experiment ``name``, creating it (artifacts beside the db) if needed; race-safe."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    root = artifact_root(uri)
    location = f"{root}/{sanitize_key(name)}" if root else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:
        exp = client.get_experiment_by_name(name)  # another process created it meanwhile
        if exp is None:
            raise
        return exp.experiment_id


def _live_run(client: Any, run_id: Optional[str]) -> Any:
    """The run ``run_id`` if the store has it (and it is not deleted), else None; other errors propagate."""
    if not run_id:
        return None
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        if getattr(err, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return None if run.info.lifecycle_stage == "deleted" else run


def _missing_store_message(db: Path, why: str) -> str:
    return (
        f"MLflow store {db} does not exist, but {why} is recorded there; restore the file (with the "
        "mlruns/ folder beside it), set tracking.uri to the store that holds it, or set "
        "tracking.enabled=false (`fsanet mlflow init` creates a new store for a new study)"
    )


def check_store(cfg: Any, require: Optional[str] = None) -> None:
    """Raise if the local store a tracker for ``cfg`` would use must exist and does not.

    :class:`Tracker` checks this itself; calling it first reports the problem before slow work
    (loading a dataset and a model) instead of after it.

    Args:
        cfg: the ``tracking`` config section.
        require: why the store must exist (see :class:`Tracker`); a study marker always requires it.

    Raises:
        MissingStoreError: naming the db file and the fix.
    """
    if not cfg.enabled:
        return
    marker = read_marker(cfg.study_marker) if cfg.study_marker else None
    why = f"the study of marker {cfg.study_marker}" if marker else require
    db = sqlite_path(resolve_uri(cfg.uri, marker["tracking_uri"] if marker else None))
    if why and db is not None and not db.exists():
        raise MissingStoreError(_missing_store_message(db, why))


def relocate_store(db: str | Path) -> dict[str, int]:
    """Point a moved SQLite store's artifact locations at the ``mlruns/`` folder beside it.

    A local store keeps absolute ``file://…/mlruns/…`` locations (MLflow resolves relative ones
    against the working directory). After the db and its ``mlruns/`` were copied or moved together,
    this rewrites every experiment's and run's location whose path contains ``/mlruns/`` to the same
    path under ``<db folder>/mlruns``; locations elsewhere (a server, another folder) are left alone.

    Returns:
        How many experiment and run locations were rewritten.

    Raises:
        FileNotFoundError: ``db`` does not exist.
        ValueError: ``db`` is not an MLflow store.
    """
    import sqlite3

    db = Path(db)
    if not db.is_file():
        raise FileNotFoundError(f"{db}: no such MLflow store (a sqlite file)")
    new_root = (db.resolve().parent / "mlruns").as_uri()

    def moved(uri: Optional[str]) -> Optional[str]:
        if not uri or not uri.startswith("file://") or "/mlruns/" not in uri:
            return None
        new = new_root + uri[uri.index("/mlruns/") + len("/mlruns") :]
        return new if new != uri else None

    counts = {"experiments": 0, "runs": 0}
    with sqlite3.connect(db) as con:
        try:
            rows = {
                "experiments": con.execute(
                    "select experiment_id, artifact_location from experiments"
                ).fetchall(),
                "runs": con.execute("select run_uuid, artifact_uri from runs").fetchall(),
            }
        except sqlite3.DatabaseError as err:
            raise ValueError(f"{db}: not an MLflow tracking store ({err})") from None
        for table, key, column in (
            ("experiments", "experiment_id", "artifact_location"),
            ("runs", "run_uuid", "artifact_uri"),
        ):
            for row_id, uri in rows[table]:
                new = moved(uri)
                if new:
                    con.execute(f"update {table} set {column} = ? where {key} = ?", (new, row_id))
                    counts[table] += 1
    return counts


def init_study(
    experiment: str,
    study: str,
    marker: str | Path,
    uri: Optional[str] = None,
    tags: Optional[Mapping[str, str]] = None,
    retries: int = 5,
    backoff_s: float = 1.0,
) -> dict[str, Any]:
    """Create the store, the experiment and the study's parent run (once), and write the marker.

    Run it alone before starting parallel jobs (a Snakemake ``localrule``). Rerunning it reuses the
    parent run of the same study (tags ``fsanet.study``/``fsanet.role``) instead of making a new one.
    The marker holds the URI with any password redacted (see :func:`redact`).

    Args:
        experiment: MLflow experiment name (e.g. ``fsanet/ablation-band``).
        study: the parent run's name.
        marker: the JSON file to write (``tracking_uri``, ``experiment``, ``experiment_id``, ``study``,
            ``parent_run_id``).
        uri: tracking URI (default: :func:`resolve_uri`).
        tags: extra tags for the parent run.
        retries: attempts per call.
        backoff_s: first retry delay.

    Raises:
        TrackingError: the store cannot be reached or written after the retries.
    """
    _quiet_environment(30)
    chosen = resolve_uri(uri)
    display = redact(chosen)
    mlflow_uri = _mlflow_uri(chosen)
    try:
        return _init_study(mlflow_uri, display, experiment, study, marker, tags, retries, backoff_s)
    except (OSError, ValueError):
        raise
    except Exception as err:
        raise TrackingError(
            f"cannot initialise study '{study}' at {display} after {retries} attempts: {_one_line(err)}"
        ) from None


def _init_study(
    uri: str,
    display: str,
    experiment: str,
    study: str,
    marker: str | Path,
    tags: Optional[Mapping[str, str]],
    retries: int,
    backoff_s: float,
) -> dict[str, Any]:
    from fsanet.provenance import git_info

    def open_store() -> tuple[Any, str]:
        with _store_lock(uri):
            client = _open_client(uri, display)
            return client, _ensure_experiment(client, experiment, uri)

    client, exp_id = _retry(open_store, "create experiment", retries, backoff_s)
    query = f"tags.`fsanet.study` = '{study}' and tags.`fsanet.role` = 'parent'"
    existing = _retry(
        lambda: client.search_runs([exp_id], filter_string=query, max_results=1),
        "search parent",
        retries,
        backoff_s,
    )
    if existing:
        run_id = existing[0].info.run_id
        log.info("study '%s' already has parent run %s", study, run_id)
    else:
        git = git_info()
        all_tags = {
            "fsanet.study": study,
            "fsanet.role": "parent",
            "mlflow.source.git.commit": str(git["git_sha"]),
            "git.dirty": str(git["git_dirty"]),
            **dict(tags or {}),
        }
        run = _retry(
            lambda: client.create_run(exp_id, tags=all_tags, run_name=study),
            "create parent",
            retries,
            backoff_s,
        )
        run_id = run.info.run_id
        _retry(lambda: client.set_terminated(run_id, "FINISHED"), "finish parent", retries, backoff_s)
        log.info("created parent run %s for study '%s' in experiment '%s'", run_id, study, experiment)
    data = {
        "tracking_uri": display,
        "experiment": experiment,
        "experiment_id": exp_id,
        "study": study,
        "parent_run_id": run_id,
        "created": _now(),
    }
    write_json(marker, data)
    return data


# --------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------
class Tracker:
    """One MLflow run (train or eval) with retries, buffered metrics and an offline fallback.

    Args:
        cfg: the ``tracking`` config section (``enabled``, ``uri``, ``experiment``, ``study_marker``,
            ``flush_interval``, ``retries``, ``backoff_s``, ``http_timeout_s``).
        out_dir: the run's folder; the offline copy goes to ``out_dir/mlflow_offline/``.
        run_name: the MLflow run name.
        tags: tags set when the run starts.
        resume_run_id: reopen this run instead of creating one (training resumed from a checkpoint).
        active: False gives a tracker that does nothing (tracking disabled, or a non-main rank).
        parent_run_id: nest the run under this one (an evaluation under its training) when it exists in
            the store; otherwise, and by default, under the study's parent run from the marker.
        parent_dir: the folder of the run named by ``parent_run_id`` (a training run's folder); recorded
            in the offline copy so that :func:`sync_offline` can nest under that run once it is synced.
        continues: this process continues the run of an earlier process in ``out_dir`` (a resumed
            training): an offline copy left there belongs to this run, and is uploaded into it (or kept
            and extended when the store is unusable again); without ``resume_run_id`` the run it names
            is reopened.
        require_store: why the store must already exist (e.g. ``"training run <id>"``), for the
            :class:`MissingStoreError` raised when a local SQLite store does not; a study marker always
            requires its store. None (default): a missing local store is created.

    Raises:
        MissingStoreError: the store must exist (see ``require_store``) and does not.
        ValueError: the study marker is not one.
    """

    def __init__(
        self,
        cfg: Any,
        out_dir: str | Path,
        run_name: str,
        tags: Optional[Mapping[str, Any]] = None,
        resume_run_id: Optional[str] = None,
        active: bool = True,
        parent_run_id: Optional[str] = None,
        *,
        parent_dir: str | Path | None = None,
        continues: bool = False,
        require_store: Optional[str] = None,
    ) -> None:
        self.active = bool(active and cfg.enabled)
        self.out_dir = Path(out_dir)
        self.offline_dir = self.out_dir / OFFLINE_DIR
        self.run_name = redact(run_name)
        self.retries, self.backoff_s = int(cfg.retries), float(cfg.backoff_s)
        self.flush_interval = max(int(cfg.flush_interval), 1)
        self.run_id: Optional[str] = None
        self.offline_reason: Optional[str] = None
        self.status = "RUNNING"
        self.params: dict[str, str] = {}
        self.tags: dict[str, str] = {}
        self.metrics: list[dict[str, Any]] = []  # everything logged, kept for the offline copy
        self.uri: Optional[str] = None  # the URI MLflow gets (an HTTP password moved to the environment)
        self.display_uri: Optional[str] = None  # the URI as logged and written (password redacted)
        self.experiment: Optional[str] = cfg.experiment
        self.parent_run_id: Optional[str] = None
        self._pending: list[dict[str, Any]] = []
        self._artifacts: list[tuple[str, Optional[str]]] = []
        self._known: set[tuple[str, int]] = set()  # (key, step) in the store or the offline copy
        self._store_params: dict[str, str] = {}  # params the run had when reopened (MLflow params are final)
        self._client: Any = None
        self._db: Optional[Path] = None
        self._watch_db = False  # True once the SQLite file exists: its disappearance sends the run offline
        self._own_parent = parent_run_id
        self._parent_dir = str(Path(parent_dir).resolve()) if parent_dir else None
        self._continues = continues
        if not self.active:
            return
        marker = read_marker(cfg.study_marker) if cfg.study_marker else None
        self.experiment = marker["experiment"] if marker else cfg.experiment
        self.parent_run_id = marker["parent_run_id"] if marker else None
        chosen = resolve_uri(cfg.uri, marker["tracking_uri"] if marker else None)
        self.display_uri = redact(chosen)
        self.uri = _mlflow_uri(chosen)
        self._db = sqlite_path(self.uri)
        why = f"the study of marker {cfg.study_marker}" if marker else require_store
        if why and self._db is not None and not self._db.exists():
            raise MissingStoreError(_missing_store_message(self._db, why))
        self.tags.update({k: redact(str(v))[:MAX_TAG_VALUE] for k, v in (tags or {}).items()})
        if self.parent_run_id:
            self.tags["mlflow.parentRunId"] = self.parent_run_id
            self.tags["fsanet.study_run_id"] = self.parent_run_id
        _quiet_environment(int(cfg.http_timeout_s))
        earlier = self._earlier_copy() if continues else None
        if earlier is not None:
            resume_run_id = (
                resume_run_id
                or earlier["run"].get("synced", {}).get("run_id")
                or earlier["run"].get("run_id")
            )
            if not earlier["synced"]:
                self._adopt(earlier)
        self._call(lambda: self._start(resume_run_id), "start run")
        if self.run_id is None and resume_run_id:
            # offline: still the run this one continues (for the next try and sync)
            self.run_id = resume_run_id
        if earlier is not None and not earlier["synced"]:
            self._call(lambda: self._upload_earlier(earlier), "upload the earlier offline copy")

    # -- plumbing ------------------------------------------------------------------------------
    @property
    def offline(self) -> bool:
        return self.offline_reason is not None

    def _call(self, fn: Callable[[], Any], what: str) -> bool:
        """Run ``fn`` with retries; on failure go offline. Returns whether it ran."""
        if not self.active or self.offline:
            return False
        if self._watch_db and self._db is not None and not self._db.exists():
            self._go_offline(f"its file {self._db} was deleted")
            return False
        try:
            _retry(fn, what, self.retries, self.backoff_s)
        except Exception as err:
            self._go_offline(f"{what} failed after {self.retries} attempts: {_one_line(err)}")
            return False
        return True

    def _start(self, resume_run_id: Optional[str]) -> None:
        assert self.uri is not None and self.display_uri is not None and self.experiment is not None
        with _store_lock(self.uri):
            self._client = _open_client(self.uri, self.display_uri)
            self._watch_db = self._db is not None
            if resume_run_id and self._reopen(resume_run_id):
                return
            exp_id = _ensure_experiment(self._client, self.experiment, self.uri)
        if self._own_parent:
            if _live_run(self._client, self._own_parent) is not None:
                self.parent_run_id = self._own_parent
                self.tags["mlflow.parentRunId"] = self._own_parent
            else:  # e.g. a checkpoint trained against another store: stay under the study
                log.info(
                    "MLflow: run %s is not in %s; not nesting under it", self._own_parent, self.display_uri
                )
        tags = {"mlflow.runName": self.run_name, **self.tags}
        run = self._client.create_run(exp_id, tags=tags, run_name=self.run_name)
        self.run_id = run.info.run_id
        log.info(
            "MLflow: run %s (%s) in experiment '%s' at %s",
            self.run_id,
            self.run_name,
            self.experiment,
            self.display_uri,
        )

    def _reopen(self, run_id: str) -> bool:
        run = _live_run(self._client, run_id)
        if run is None:
            log.warning(
                "MLflow run %s is not in %s (deleted, or logged to another store); starting a new run",
                run_id,
                self.display_uri,
            )
            return False
        self._client.update_run(run_id, status="RUNNING")
        self.run_id = run_id
        self._store_params = dict(run.data.params)
        self.parent_run_id = run.data.tags.get("mlflow.parentRunId", self.parent_run_id)
        log.info("MLflow: resuming run %s", run_id)
        return True

    def _earlier_copy(self) -> Optional[dict[str, Any]]:
        """The offline copy an earlier process of this run left in ``out_dir`` (None if there is none)."""
        if not (self.offline_dir / "run.json").is_file():
            return None
        try:
            copy = _read_copy(self.offline_dir)
        except (OSError, ValueError) as err:
            log.warning("ignoring the unreadable offline MLflow copy in %s (%s)", self.offline_dir, err)
            return None
        copy["synced"] = bool(copy["run"].get("synced", {}).get("complete"))
        return copy

    def _adopt(self, copy: dict[str, Any]) -> None:
        """Start from an unsynced earlier copy: its contents are kept, deduplicated against this run."""
        self.params.update({k: str(v) for k, v in copy["params"].items()})
        self.metrics.extend(copy["metrics"])
        self._known.update((m["key"], int(m["step"])) for m in copy["metrics"])
        earlier_tags = {
            k: str(v) for k, v in copy["run"].get("tags", {}).items() if k not in _OFFLINE_ONLY_TAGS
        }
        self.tags = {**earlier_tags, **self.tags}

    def _upload_earlier(self, copy: dict[str, Any]) -> None:
        counts = _upload_copy(self._client, self.run_id, copy)
        for key, value in copy["params"].items():
            self._store_params.setdefault(key, str(value))
        info = dict(copy["run"])
        info["synced"] = {
            "run_id": self.run_id,
            "tracking_uri": self.display_uri,
            "time": _now(),
            "complete": True,
            **counts,
        }
        write_json(self.offline_dir / "run.json", info)
        log.info(
            "MLflow: uploaded the offline copy of an earlier attempt into run %s (%s)",
            self.run_id,
            ", ".join(f"{v} {k}" for k, v in counts.items()),
        )

    def _go_offline(self, reason: str) -> None:
        self.offline_reason = redact(reason)
        log.warning(
            "MLflow tracking unavailable (store %s: %s); the run goes on, and its params, metrics, tags and "
            "artifacts are kept under %s (`fsanet mlflow sync %s` uploads them later)",
            self.display_uri,
            self.offline_reason,
            self.offline_dir,
            self.out_dir,
        )
        if not self._continues:
            copy = self._earlier_copy()
            if copy is not None and copy["synced"]:  # another run's copy, already in a store: start afresh
                shutil.rmtree(self.offline_dir, ignore_errors=True)
        for path, artifact_path in self._artifacts:
            self._copy_offline(path, artifact_path)
        self._write_offline()

    def _write_offline(self) -> None:
        folder = self.offline_dir
        write_json(
            folder / "run.json",
            {
                "format": 1,
                "run_name": self.run_name,
                "run_id": self.run_id,
                "experiment": self.experiment,
                "tracking_uri": self.display_uri,
                "parent_run_id": self.parent_run_id,
                "nest_under": self._own_parent,
                "parent_dir": self._parent_dir,
                "out_dir": str(self.out_dir.resolve()),
                "status": self.status,
                "reason": self.offline_reason,
                "updated": _now(),
                "tags": self.tags,
            },
        )
        write_json(folder / "params.json", self.params)
        write_json(folder / "metrics.json", [_json_safe(m) for m in self.metrics])

    def _copy_offline(self, path: str | Path, artifact_path: Optional[str]) -> None:
        path = Path(path)
        dest = self.offline_dir / "artifacts" / (artifact_path or "") / path.name
        with atomic_path(dest) as tmp:
            shutil.copyfile(path, tmp)

    # -- public API ----------------------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log a flat mapping as params (≤100 per request; values redacted and cut to 6000 chars)."""
        if not self.active:
            return
        from mlflow.entities import Param

        new = {sanitize_key(k): _param_value(v) for k, v in params.items()}
        self.params.update(new)
        changed = sorted(k for k, v in new.items() if self._store_params.get(k, v) != v)
        if changed:  # e.g. tracking settings changed between the segments of a resumed run
            log.info(
                "MLflow run %s keeps its first values of params %s (MLflow params cannot change)",
                self.run_id,
                ", ".join(changed[:5]) + (" …" if len(changed) > 5 else ""),
            )
        items = [Param(k, v) for k, v in new.items() if k not in self._store_params]
        self._store_params.update({k: v for k, v in new.items() if k not in self._store_params})
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            chunk = items[i : i + MAX_PARAMS_PER_BATCH]
            self._call(lambda c=chunk: self._client.log_batch(self.run_id, params=c), "log params")
        if self.offline:
            self._write_offline()

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set tags (values redacted and cut to 8000 chars)."""
        if not self.active:
            return
        from mlflow.entities import RunTag

        new = {k: redact(str(v))[:MAX_TAG_VALUE] for k, v in tags.items()}
        self.tags.update(new)
        self._call(
            lambda: self._client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in new.items()]),
            "set tags",
        )
        if self.offline:
            self._write_offline()

    def load_logged_steps(self, keys: Iterable[str]) -> int:
        """Read which steps of metrics ``keys`` the run already has in the store; logging one of those
        (key, step) pairs again is then skipped (a resumed run re-logs its history safely).

        Returns:
            How many (key, step) pairs the store holds.
        """
        if not self.active or self.offline or self.run_id is None:
            return 0
        names = [sanitize_key(k) for k in keys]
        found: list[tuple[str, int]] = []

        def fetch() -> None:
            found.clear()
            for name in names:
                found.extend((name, int(m.step)) for m in self._client.get_metric_history(self.run_id, name))

        if not self._call(fetch, "read metric history"):
            return 0
        self._known.update(found)
        return len(found)

    def log_metrics(self, metrics: Mapping[str, float], step: int, flush: bool = False) -> None:
        """Buffer metrics for ``step``; they are sent by :meth:`flush` (or now, with ``flush=True``).
        A (key, step) that this run already has is skipped: each point is logged once."""
        if not self.active:
            return
        stamp = int(time.time() * 1000)
        for key, value in metrics.items():
            entry = {"key": sanitize_key(key), "value": float(value), "step": int(step), "timestamp": stamp}
            if (entry["key"], entry["step"]) in self._known:
                continue
            self._known.add((entry["key"], entry["step"]))
            self.metrics.append(entry)
            self._pending.append(entry)
        if flush:
            self.flush()

    def maybe_flush(self, step: int) -> None:
        """Flush when ``step`` is a multiple of ``flush_interval`` (cheap otherwise)."""
        if self._pending and step % self.flush_interval == 0:
            self.flush()

    def flush(self) -> None:
        """Send the buffered metrics (offline: rewrite the offline copy)."""
        if not self.active or not self._pending:
            return
        pending, self._pending = self._pending, []
        if self.offline:
            self._write_offline()
            return
        from mlflow.entities import Metric

        items = [Metric(m["key"], m["value"], m["timestamp"], m["step"]) for m in pending]
        for i in range(0, len(items), MAX_METRICS_PER_BATCH):
            chunk = items[i : i + MAX_METRICS_PER_BATCH]
            self._call(lambda c=chunk: self._client.log_batch(self.run_id, metrics=c), "log metrics")
        if self.offline:
            self._write_offline()

    def log_artifact(self, path: str | Path, artifact_path: Optional[str] = None) -> None:
        """Upload a file (kept locally under ``mlflow_offline/artifacts`` when offline)."""
        if not self.active:
            return
        self._artifacts.append((str(path), artifact_path))
        if self.offline:
            self._copy_offline(path, artifact_path)
            return
        self._call(lambda: self._client.log_artifact(self.run_id, str(path), artifact_path), "log artifact")

    def finish(self, status: str = "FINISHED") -> None:
        """Flush, then mark the run ``FINISHED``/``FAILED``/``KILLED``."""
        if not self.active:
            return
        self.flush()
        self.status = status
        if self.run_id is not None:
            self._call(lambda: self._client.set_terminated(self.run_id, status), "end run")
        if self.offline:
            self.tags["fsanet.status"] = status
            self._write_offline()


def _json_safe(entry: dict[str, Any]) -> dict[str, Any]:
    value = entry["value"]
    return {**entry, "value": value if math.isfinite(value) else str(value)}


# --------------------------------------------------------------------------------------------
# Offline copies: reading, uploading, `fsanet mlflow sync`
# --------------------------------------------------------------------------------------------
_OFFLINE_ONLY_TAGS = ("mlflow.parentRunId", "mlflow.runName", "fsanet.status")
_TEMPORARY = re.compile(r"^\..+\.tmp-")


def _read_copy(folder: Path) -> dict[str, Any]:
    """``run.json``, ``params.json`` and ``metrics.json`` of an offline copy (metric values as floats)."""
    run = read_json(folder / "run.json")
    if not isinstance(run, dict) or "run_name" not in run or not isinstance(run.get("tags", {}), dict):
        raise ValueError(f"{folder / 'run.json'}: not an fsanet offline MLflow copy (no run_name/tags)")
    params = read_json(folder / "params.json") if (folder / "params.json").is_file() else {}
    metrics = read_json(folder / "metrics.json") if (folder / "metrics.json").is_file() else []
    metrics = [
        {**m, "value": float(m["value"]), "step": int(m["step"]), "timestamp": int(m["timestamp"])}
        for m in metrics
    ]
    return {"folder": folder, "run": run, "params": params, "metrics": metrics}


def _artifact_sizes(client: Any, run_id: str, path: Optional[str] = None) -> dict[str, Optional[int]]:
    out: dict[str, Optional[int]] = {}
    for info in client.list_artifacts(run_id, path):
        if info.is_dir:
            out.update(_artifact_sizes(client, run_id, info.path))
        else:
            out[info.path] = info.file_size
    return out


def _upload_copy(client: Any, run_id: str, copy: dict[str, Any]) -> dict[str, int]:
    """Log what an offline copy holds and run ``run_id`` lacks: params not set yet, (key, step) metric
    points not in the store, tags that differ, artifact files missing (or of another size).

    Returns:
        How many params, metric points, tags and artifacts were added.
    """
    from mlflow.entities import Metric, Param, RunTag

    run = client.get_run(run_id)
    have = run.data.params
    params = [Param(k, str(v)) for k, v in copy["params"].items() if k not in have]
    clashes = sorted(k for k, v in copy["params"].items() if k in have and have[k] != str(v))
    if clashes:  # MLflow params cannot change
        log.info(
            "MLflow run %s keeps its values of params %s (the offline copy has others)",
            run_id,
            ", ".join(clashes[:5]) + (" …" if len(clashes) > 5 else ""),
        )
    tags = [
        RunTag(k, str(v)[:MAX_TAG_VALUE])
        for k, v in copy["run"].get("tags", {}).items()
        if k not in _OFFLINE_ONLY_TAGS and run.data.tags.get(k) != str(v)[:MAX_TAG_VALUE]
    ]
    by_key: dict[str, list[dict[str, Any]]] = {}
    for m in copy["metrics"]:
        by_key.setdefault(m["key"], []).append(m)
    metrics = []
    for key, entries in by_key.items():
        steps = {int(m.step) for m in client.get_metric_history(run_id, key)}
        for m in entries:
            if m["step"] not in steps:
                steps.add(m["step"])
                metrics.append(Metric(key, m["value"], m["timestamp"], m["step"]))
    for i in range(0, len(params), MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=params[i : i + MAX_PARAMS_PER_BATCH])
    for i in range(0, len(tags), MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, tags=tags[i : i + MAX_PARAMS_PER_BATCH])
    for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[i : i + MAX_METRICS_PER_BATCH])
    artifacts = 0
    root = Path(copy["folder"]) / "artifacts"
    if root.is_dir():
        sizes = _artifact_sizes(client, run_id)
        for path in sorted(p for p in root.rglob("*") if p.is_file() and not _TEMPORARY.match(p.name)):
            rel = path.relative_to(root)
            if sizes.get(rel.as_posix(), -1) == path.stat().st_size:
                continue
            folder = rel.parent.as_posix()
            client.log_artifact(run_id, str(path), None if folder == "." else folder)
            artifacts += 1
    return {"params": len(params), "metrics": len(metrics), "tags": len(tags), "artifacts": artifacts}


def _find_copies(run_dirs: Sequence[str | Path]) -> list[Path]:
    """The offline copies in or below ``run_dirs``: parents first (a training before its evaluations)."""
    found: set[Path] = set()
    for run_dir in map(Path, run_dirs):
        if not run_dir.is_dir():
            raise FileNotFoundError(f"{run_dir}: no such run folder")
        here = {p.parent.resolve() for p in run_dir.rglob("run.json") if p.parent.name == OFFLINE_DIR}
        if run_dir.name == OFFLINE_DIR and (run_dir / "run.json").is_file():
            here.add(run_dir.resolve())
        if not here:
            log.info("%s: no offline MLflow copy (%s/run.json) in or below it", run_dir, OFFLINE_DIR)
        found |= here
    return sorted(found, key=lambda p: (len(p.parts), str(p)))


def _sync_parent(client: Any, info: Mapping[str, Any]) -> Optional[str]:
    """The run a synced copy nests under: the run it asked for (its training), else the training's own
    synced copy, else the study's parent run; the first one the store has."""
    candidates = [info.get("nest_under")]
    if info.get("parent_dir"):
        other = Path(info["parent_dir"]) / OFFLINE_DIR / "run.json"
        if other.is_file():
            data = read_json(other)
            candidates += [(data.get("synced") or {}).get("run_id"), data.get("run_id")]
    candidates.append(info.get("parent_run_id"))
    for run_id in candidates:
        if run_id and _live_run(client, run_id) is not None:
            return run_id
    return None


def _sync_target(client: Any, info: Mapping[str, Any], uri: str) -> tuple[str, bool]:
    """The run a copy goes into: the one it was synced into or logged to before, else a new run."""
    for run_id in ((info.get("synced") or {}).get("run_id"), info.get("run_id")):
        if run_id and _live_run(client, run_id) is not None:
            return run_id, False
    with _store_lock(uri):
        exp_id = _ensure_experiment(client, info.get("experiment") or "fsanet/debug", uri)
    tags = {k: str(v)[:MAX_TAG_VALUE] for k, v in info.get("tags", {}).items() if k not in _OFFLINE_ONLY_TAGS}
    tags["mlflow.runName"] = info["run_name"]
    parent = _sync_parent(client, info)
    if parent:
        tags["mlflow.parentRunId"] = parent
    run = client.create_run(exp_id, tags=tags, run_name=info["run_name"])
    return run.info.run_id, True


def sync_offline(
    run_dirs: Sequence[str | Path],
    uri: Optional[str] = None,
    retries: int = 3,
    backoff_s: float = 1.0,
) -> list[dict[str, Any]]:
    """Upload the offline copies (``mlflow_offline/``) in or below ``run_dirs`` into a store.

    Each copy goes into the run it was synced into before, else the run it was logging to when the
    store failed (if the store has it), else a new run in its experiment, nested under its training
    run or study parent when the store has one. Params the run lacks, metric points whose (key, step)
    it lacks, differing tags and missing artifact files are added; the run gets the copy's final
    status (``KILLED`` for a copy that never finished). The copy is then marked synced in its
    ``run.json``; syncing again adds nothing.

    Args:
        run_dirs: run folders (a training's copy is synced before the evaluations below it).
        uri: the store (default: the store each copy names, then ``$MLFLOW_TRACKING_URI``, then the
            project's ``mlflow.db``). A local SQLite store must exist (``fsanet mlflow init`` makes one).
        retries: attempts per step.
        backoff_s: first retry delay.

    Returns:
        One receipt per copy: ``folder``, ``run_id``, ``created``, ``status``, ``tracking_uri`` and the
        counts of ``params``, ``metrics``, ``tags`` and ``artifacts`` added.

    Raises:
        FileNotFoundError: a run folder, or the SQLite store, does not exist.
        ValueError: a ``run.json`` is not an offline copy.
        TrackingError: the store cannot be reached or written after the retries.
    """
    _quiet_environment(30)
    clients: dict[str, Any] = {}
    return [_sync_copy(folder, uri, clients, retries, backoff_s) for folder in _find_copies(run_dirs)]


def _sync_copy(
    folder: Path,
    uri: Optional[str],
    clients: dict[str, Any],
    retries: int,
    backoff_s: float,
) -> dict[str, Any]:
    copy = _read_copy(folder)
    info = copy["run"]
    chosen = resolve_uri(uri, info.get("tracking_uri"))
    display = redact(chosen)
    mlflow_uri = _mlflow_uri(chosen)
    db = sqlite_path(mlflow_uri)
    if db is not None and not db.exists():
        raise MissingStoreError(
            f"MLflow store {db} does not exist; name an existing store with --uri, or create "
            "one with `fsanet mlflow init --uri URI --experiment … --study …`"
        )

    def step(fn: Callable[[], T], what: str) -> T:
        try:
            return _retry(fn, what, retries, backoff_s)
        except Exception as err:
            raise TrackingError(
                f"cannot sync {folder} into {display}: {what} failed: {_one_line(err)}"
            ) from None

    def client() -> Any:
        if mlflow_uri not in clients:
            with _store_lock(mlflow_uri):
                clients[mlflow_uri] = _open_client(mlflow_uri, display)
        return clients[mlflow_uri]

    step(client, "open store")
    run_id, created = step(lambda: _sync_target(clients[mlflow_uri], info, mlflow_uri), "find or create run")
    info["synced"] = {"run_id": run_id, "tracking_uri": display, "time": _now(), "complete": False}
    write_json(folder / "run.json", info)  # a retry after a crash reuses this run
    counts = step(lambda: _upload_copy(clients[mlflow_uri], run_id, copy), "upload")
    status = str(info.get("status") or info.get("tags", {}).get("fsanet.status") or "KILLED")
    status = status if status in _TERMINAL else "KILLED"

    def close() -> None:
        if clients[mlflow_uri].get_run(run_id).info.status != status:
            clients[mlflow_uri].set_terminated(run_id, status)

    step(close, "set status")
    info["synced"] = {
        "run_id": run_id,
        "tracking_uri": display,
        "time": _now(),
        "complete": True,
        "created": created,
        **counts,
    }
    write_json(folder / "run.json", info)
    log.info("MLflow: synced %s into run %s at %s", folder, run_id, display)
    return {
        "folder": str(folder),
        "run_id": run_id,
        "created": created,
        "status": status,
        "tracking_uri": display,
        **counts,
    }
