"""MLflow tracking that never costs a training run.

* Store: ``tracking.uri`` > the study marker's URI > ``$MLFLOW_TRACKING_URI`` > ``sqlite:///mlflow.db``
  at the project root (the nearest folder above the working directory holding ``pyproject.toml``,
  ``Snakefile`` or ``.git``; else the working directory). Relative SQLite paths are made absolute
  against that root, and experiments created here keep their artifacts in ``mlruns/`` beside the db.
* Studies: :func:`init_study` (``fsanet mlflow init``) creates the store, the experiment and the
  study's parent run once, and writes a marker JSON with the parent's id; each training or
  evaluation process reads the marker and starts a child run (``mlflow.parentRunId``). Creating
  the store first avoids MLflow's migration race when many processes open a fresh SQLite file.
* Resilience: every MLflow call is retried with exponential backoff; if it still fails, the run
  goes offline: params, metrics, tags and artifacts are kept under ``<out_dir>/mlflow_offline/``
  and a warning says so. Metrics are buffered and sent every ``flush_interval`` iterations.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Optional, TypeVar

from fsanet.io import atomic_path, read_json, write_json

__all__ = [
    "Tracker",
    "TrackingError",
    "flatten",
    "init_study",
    "project_root",
    "read_marker",
    "relocate_store",
    "resolve_uri",
    "sanitize_key",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
_BAD_KEY_CHARS = re.compile(r"[^/\w.\- ]")


class TrackingError(RuntimeError):
    """The tracking store could not be reached or initialised (after retries)."""


def _quiet_environment(http_timeout_s: int) -> None:
    """Telemetry off, and MLflow's own HTTP retries short: ours (with the offline fallback) take over."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(http_timeout_s))


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
    path = uri[len(prefix):]
    if path.startswith("/") or path == ":memory:":
        return uri
    return prefix + str((root / path).resolve())


def resolve_uri(uri: Optional[str] = None, marker_uri: Optional[str] = None, root: Path | None = None) -> str:
    """The tracking URI by precedence: explicit > marker > ``$MLFLOW_TRACKING_URI`` > project sqlite db."""
    root = root or project_root()
    chosen = uri or marker_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    return _absolute_sqlite(chosen, root)


def artifact_root(uri: str) -> Optional[str]:
    """``file://…/mlruns`` beside a local SQLite db; None (the server decides) otherwise."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and uri[len(prefix):] != ":memory:":
        return (Path(uri[len(prefix):]).parent / "mlruns").as_uri()
    return None


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys for a nested mapping: ``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def sanitize_key(key: str) -> str:
    """An MLflow-valid metric/param name: unsupported characters become ``_``."""
    key = _BAD_KEY_CHARS.sub("_", key)
    key = re.sub(r"/{2,}", "/", key).strip("/") or "_"
    return "/".join(part if part not in (".", "..") else "_" for part in key.split("/"))


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if len(text) > MAX_PARAM_VALUE:
        log.warning("MLflow param value of %d chars cut to %d (the full config is an artifact)",
                    len(text), MAX_PARAM_VALUE)
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
            return fn()
        except Exception as err:  # store locked, server down, migration race: all worth a retry
            if attempt == attempts - 1:
                raise
            delay = backoff_s * 2**attempt
            log.debug("MLflow %s failed (%s: %s); retrying in %.2fs", what, type(err).__name__, err, delay)
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
        new = new_root + uri[uri.index("/mlruns/") + len("/mlruns"):]
        return new if new != uri else None

    counts = {"experiments": 0, "runs": 0}
    with sqlite3.connect(db) as con:
        try:
            rows = {"experiments": con.execute("select experiment_id, artifact_location from experiments").fetchall(),
                    "runs": con.execute("select run_uuid, artifact_uri from runs").fetchall()}
        except sqlite3.DatabaseError as err:
            raise ValueError(f"{db}: not an MLflow tracking store ({err})") from None
        for table, key, column in (("experiments", "experiment_id", "artifact_location"),
                                   ("runs", "run_uuid", "artifact_uri")):
            for row_id, uri in rows[table]:
                new = moved(uri)
                if new:
                    con.execute(f"update {table} set {column} = ? where {key} = ?", (new, row_id))
                    counts[table] += 1
    return counts


def init_study(
    experiment: str, study: str, marker: str | Path, uri: Optional[str] = None,
    tags: Optional[Mapping[str, str]] = None, retries: int = 5, backoff_s: float = 1.0,
) -> dict[str, Any]:
    """Create the store, the experiment and the study's parent run (once), and write the marker.

    Run it alone before starting parallel jobs (a Snakemake ``localrule``). Rerunning it reuses the
    parent run of the same study (tags ``fsanet.study``/``fsanet.role``) instead of making a new one.

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
    from mlflow import MlflowClient

    uri = resolve_uri(uri)
    try:
        return _init_study(MlflowClient(tracking_uri=uri), uri, experiment, study, marker, tags, retries, backoff_s)
    except (OSError, ValueError):
        raise
    except Exception as err:
        raise TrackingError(f"cannot initialise study '{study}' at {uri} after {retries} attempts: "
                            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None


def _init_study(
    client: Any, uri: str, experiment: str, study: str, marker: str | Path, tags: Optional[Mapping[str, str]],
    retries: int, backoff_s: float,
) -> dict[str, Any]:
    from fsanet.provenance import git_info

    exp_id = _retry(lambda: _ensure_experiment(client, experiment, uri), "create experiment", retries, backoff_s)
    query = f"tags.`fsanet.study` = '{study}' and tags.`fsanet.role` = 'parent'"
    existing = _retry(lambda: client.search_runs([exp_id], filter_string=query, max_results=1),
                      "search parent", retries, backoff_s)
    if existing:
        run_id = existing[0].info.run_id
        log.info("study '%s' already has parent run %s", study, run_id)
    else:
        git = git_info()
        all_tags = {
            "fsanet.study": study, "fsanet.role": "parent",
            "mlflow.source.git.commit": str(git["git_sha"]), "git.dirty": str(git["git_dirty"]),
            **dict(tags or {}),
        }
        run = _retry(lambda: client.create_run(exp_id, tags=all_tags, run_name=study), "create parent",
                     retries, backoff_s)
        run_id = run.info.run_id
        _retry(lambda: client.set_terminated(run_id, "FINISHED"), "finish parent", retries, backoff_s)
        log.info("created parent run %s for study '%s' in experiment '%s'", run_id, study, experiment)
    data = {
        "tracking_uri": uri, "experiment": experiment, "experiment_id": exp_id, "study": study,
        "parent_run_id": run_id, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
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
    """

    def __init__(
        self, cfg: Any, out_dir: str | Path, run_name: str, tags: Optional[Mapping[str, Any]] = None,
        resume_run_id: Optional[str] = None, active: bool = True, parent_run_id: Optional[str] = None,
    ) -> None:
        self.active = bool(active and cfg.enabled)
        self.out_dir = Path(out_dir)
        self.run_name = run_name
        self.retries, self.backoff_s = int(cfg.retries), float(cfg.backoff_s)
        self.flush_interval = max(int(cfg.flush_interval), 1)
        self.run_id: Optional[str] = None
        self.offline_reason: Optional[str] = None
        self.params: dict[str, str] = {}
        self.tags: dict[str, str] = {}
        self.metrics: list[dict[str, Any]] = []  # everything logged, kept for the offline copy
        self._pending: list[dict[str, Any]] = []
        self._artifacts: list[tuple[str, Optional[str]]] = []
        self._client: Any = None
        if not self.active:
            return
        marker = read_marker(cfg.study_marker) if cfg.study_marker else None
        self.experiment = marker["experiment"] if marker else cfg.experiment
        self.parent_run_id = marker["parent_run_id"] if marker else None
        self._own_parent = parent_run_id
        self.uri = resolve_uri(cfg.uri, marker["tracking_uri"] if marker else None)
        self.tags.update({k: str(v) for k, v in (tags or {}).items()})
        if self.parent_run_id:
            self.tags["mlflow.parentRunId"] = self.parent_run_id
            self.tags["fsanet.study_run_id"] = self.parent_run_id
        _quiet_environment(int(cfg.http_timeout_s))
        self._call(lambda: self._start(resume_run_id), "start run")

    # -- plumbing ------------------------------------------------------------------------------
    @property
    def offline(self) -> bool:
        return self.offline_reason is not None

    def _call(self, fn: Callable[[], Any], what: str) -> None:
        if not self.active or self.offline:
            return
        try:
            _retry(fn, what, self.retries, self.backoff_s)
        except Exception as err:
            self._go_offline(f"{what} failed after {self.retries} attempts: {type(err).__name__}: {err}")

    def _start(self, resume_run_id: Optional[str]) -> None:
        from mlflow import MlflowClient

        self._client = MlflowClient(tracking_uri=self.uri)
        if resume_run_id:
            try:
                self._client.get_run(resume_run_id)
                self._client.update_run(resume_run_id, status="RUNNING")
                self.run_id = resume_run_id
                log.info("MLflow: resuming run %s", resume_run_id)
                return
            except Exception as err:
                log.warning("MLflow run %s cannot be reopened (%s); starting a new run", resume_run_id, err)
        exp_id = _ensure_experiment(self._client, self.experiment, self.uri)
        if self._own_parent:
            try:
                self._client.get_run(self._own_parent)
                self.parent_run_id = self._own_parent
                self.tags["mlflow.parentRunId"] = self._own_parent
            except Exception:  # e.g. a checkpoint trained against another store: stay under the study
                log.info("MLflow: run %s is not in %s; not nesting under it", self._own_parent, self.uri)
        tags = {"mlflow.runName": self.run_name, **self.tags}
        run = self._client.create_run(exp_id, tags=tags, run_name=self.run_name)
        self.run_id = run.info.run_id
        log.info("MLflow: run %s (%s) in experiment '%s' at %s", self.run_id, self.run_name, self.experiment,
                 self.uri)

    def _go_offline(self, reason: str) -> None:
        self.offline_reason = reason
        log.warning(
            "MLflow tracking unavailable (%s); the run continues and its params, metrics, tags and artifacts "
            "are kept under %s", reason, self.out_dir / "mlflow_offline",
        )
        for path, artifact_path in self._artifacts:
            self._copy_offline(path, artifact_path)
        self._write_offline()

    def _write_offline(self) -> None:
        folder = self.out_dir / "mlflow_offline"
        write_json(folder / "run.json", {
            "run_name": self.run_name, "run_id": self.run_id, "experiment": getattr(self, "experiment", None),
            "tracking_uri": getattr(self, "uri", None), "parent_run_id": getattr(self, "parent_run_id", None),
            "reason": self.offline_reason, "tags": self.tags,
        })
        write_json(folder / "params.json", self.params)
        write_json(folder / "metrics.json", [_json_safe(m) for m in self.metrics])

    def _copy_offline(self, path: str | Path, artifact_path: Optional[str]) -> None:
        path = Path(path)
        dest = self.out_dir / "mlflow_offline" / "artifacts" / (artifact_path or "") / path.name
        with atomic_path(dest) as tmp:
            shutil.copyfile(path, tmp)

    # -- public API ----------------------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log a flat mapping as params (≤100 per request; values cut to 6000 chars)."""
        if not self.active:
            return
        from mlflow.entities import Param

        new = {sanitize_key(k): _param_value(v) for k, v in params.items()}
        self.params.update(new)
        items = [Param(k, v) for k, v in new.items()]
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            chunk = items[i:i + MAX_PARAMS_PER_BATCH]
            self._call(lambda c=chunk: self._client.log_batch(self.run_id, params=c), "log params")
        if self.offline:
            self._write_offline()

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self.active:
            return
        from mlflow.entities import RunTag

        new = {k: str(v)[:MAX_TAG_VALUE] for k, v in tags.items()}
        self.tags.update(new)
        self._call(lambda: self._client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in new.items()]),
                   "set tags")
        if self.offline:
            self._write_offline()

    def log_metrics(self, metrics: Mapping[str, float], step: int, flush: bool = False) -> None:
        """Buffer metrics for ``step``; they are sent by :meth:`flush` (or now, with ``flush=True``)."""
        if not self.active:
            return
        stamp = int(time.time() * 1000)
        for key, value in metrics.items():
            entry = {"key": sanitize_key(key), "value": float(value), "step": int(step), "timestamp": stamp}
            self.metrics.append(entry)
            self._pending.append(entry)
        if flush:
            self.flush()

    def maybe_flush(self, step: int) -> None:
        """Flush when ``step`` is a multiple of ``flush_interval`` (cheap otherwise)."""
        if self._pending and step % self.flush_interval == 0:
            self.flush()

    def flush(self) -> None:
        if not self.active or not self._pending:
            return
        pending, self._pending = self._pending, []
        if self.offline:
            self._write_offline()
            return
        from mlflow.entities import Metric

        items = [Metric(m["key"], m["value"], m["timestamp"], m["step"]) for m in pending]
        for i in range(0, len(items), MAX_METRICS_PER_BATCH):
            chunk = items[i:i + MAX_METRICS_PER_BATCH]
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
        if self.run_id is not None:
            self._call(lambda: self._client.set_terminated(self.run_id, status), "end run")
        if self.offline:
            self.tags["fsanet.status"] = status
            self._write_offline()


def _json_safe(entry: dict[str, Any]) -> dict[str, Any]:
    value = entry["value"]
    return {**entry, "value": value if math.isfinite(value) else str(value)}
