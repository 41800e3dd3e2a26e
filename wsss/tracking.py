"""MLflow tracking: default store, run context, flattened params, metrics and artifacts.

The default store is a SQLite file ``mlflow.db`` in the working directory with artifacts under
``mlruns/`` beside it; ``--tracking-uri`` or ``$MLFLOW_TRACKING_URI`` override it. Open it with
``mlflow ui --backend-store-uri sqlite:///mlflow.db``.

Every log call goes through this module. A tracking server (``http(s)://``) that does not answer
when a run starts is an error (:class:`TrackingError`, raised before any compute by
:func:`check_tracking_uri`). One that stops answering during a run does not stop the run: from
the first failed call on, params, metrics, texts and artifacts of that server are appended to a
local JSON-lines file (``mlflow_unsent.jsonl`` in the run's output folder, artifacts copied
beside it) and the run ends with a warning naming the file (:func:`kept_locally`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping
from urllib.parse import urlparse
from urllib.request import url2pathname

import mlflow
from mlflow.entities import Param

from wsss.config import flatten
from wsss.errors import WsssError
from wsss.names import mlflow_limit, param_value_limit, tag_value_limit
from wsss.storage import absolute

PARAMS_ARTIFACT = "params_full.json"  # full text of the params that had to be shortened
SHORTENED_TAG = "wsss.params_shortened"  # the keys of those params
URI_ENV = "MLFLOW_TRACKING_URI"
UNSENT_FILE = "mlflow_unsent.jsonl"
UNSENT_ARTIFACTS = "mlflow_unsent_artifacts"
UNSENT_RUN_PREFIX = "unsent-"  # a stand-in run id for a run the server could not create
HEALTH_TIMEOUT_S = 5.0
# A dead server fails fast instead of MLflow's default of minutes of retries (user values win).
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}

_offline: dict[str, str] = {}  # server URI -> why it stopped answering (this process)
_unsent_files: dict[str, Path] = {}  # run id -> where its unsent records go (this process)
_shortened: dict[str, dict[str, str]] = {}  # run id -> {key: full text} of shortened params


class TrackingError(WsssError, RuntimeError):
    """The MLflow tracking server does not answer."""


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``; a relative
    local store made absolute (``wsss.storage.absolute``), as Ray workers run elsewhere."""
    return absolute(uri or os.environ.get(URI_ENV) or f"sqlite:///{Path.cwd() / 'mlflow.db'}")


def missing_local_store(uri: str) -> Path | None:
    """The path of a local store (``sqlite:///PATH``, ``file:PATH`` or a bare folder) that does
    not exist; None for a store that exists or a server. Readers check this first: MLflow
    would create an empty store there."""
    if is_server(uri):
        return None
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
    else:
        path = Path(url2pathname(urlparse(uri).path) if uri.startswith("file:") else uri)
    return None if path.exists() else path


def _artifact_location(uri: str) -> str | None:
    """Local stores keep artifacts in ``mlruns/`` next to the database file."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlruns").resolve().as_uri()
    return None


def ensure_experiment(name: str, uri: str) -> str:
    """Id of experiment ``name`` in the store at ``uri``, created if missing."""
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=_artifact_location(uri))


def is_server(uri: str) -> bool:
    """Whether ``uri`` names a tracking server (rather than a local store)."""
    return uri.startswith(("http://", "https://"))


def check_tracking_uri(uri: str | None = None, timeout: float = HEALTH_TIMEOUT_S) -> str:
    """The resolved URI; TrackingError naming it when it is a server that does not answer.

    Asks the server's ``/health`` page (``timeout`` seconds); local stores are not checked.
    """
    uri = resolve_tracking_uri(uri)
    if not is_server(uri):
        return uri
    _fail_fast()
    problem = _health_problem(uri, timeout)
    if problem:
        raise TrackingError(f"MLflow tracking server {uri} is not reachable ({problem}); start "
                            f"it, or choose another store with --tracking-uri or "
                            f"$MLFLOW_TRACKING_URI (unset: sqlite:///mlflow.db here)")
    _offline.pop(uri, None)
    return uri


def _fail_fast() -> None:
    """MLflow HTTP settings that give up on a dead server in seconds (user values win)."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)


def _health_problem(uri: str, timeout: float) -> str | None:
    """Why ``uri``'s ``/health`` page does not answer OK, or None when it does."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as answer:
            return None if answer.status == 200 else f"/health answered {answer.status}"
    except urllib.error.HTTPError as err:
        return f"/health answered {err.code}"
    except (urllib.error.URLError, OSError) as err:
        return str(getattr(err, "reason", err))


@contextlib.contextmanager
def start_run(run_name: str, *, experiment: str = "wsss", uri: str | None = None,
              params: Mapping[str, Any] | None = None, tags: Mapping[str, str] | None = None,
              parent_run_id: str | None = None,
              local_dir: str | Path | None = None) -> Iterator[Any]:
    """Open an MLflow run (nested under ``parent_run_id`` when given) and log flat params.

    Yields the ``mlflow.ActiveRun``; the run ends FINISHED, or FAILED if the body raises. A
    server that stops answering during the run does not fail it: what could not be sent goes
    to ``local_dir/mlflow_unsent.jsonl`` (default: the working directory), and a warning
    names that file when the run ends.
    """
    uri = check_tracking_uri(uri)
    # mlflow.set_tracking_uri also sets $MLFLOW_TRACKING_URI: restored when the run ends, so
    # one run's store does not become the default of the next run in this process.
    with env_restored(URI_ENV):
        mlflow.set_tracking_uri(uri)
        experiment_id = ensure_experiment(experiment, uri)
        all_tags = dict(tags or {})
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = mlflow.start_run(run_name=run_name, experiment_id=experiment_id, tags=all_tags,
                               nested=mlflow.active_run() is not None)
        run_id = run.info.run_id
        _unsent_files[run_id] = (Path(local_dir or Path.cwd()) / UNSENT_FILE).resolve()
        status = "FAILED"
        try:
            if params:
                log_params(params)
            yield run
            status = "FINISHED"
        finally:
            send_or_keep(uri, run_id, {"kind": "end_run", "status": status},
                     lambda: mlflow.end_run(status))
            _warn_kept(run_name, uri, run_id)


@contextlib.contextmanager
def env_restored(key: str, value: str | None = None) -> Iterator[None]:
    """Environment variable ``key`` (set to ``value`` when given) restored on exit."""
    saved = os.environ.get(key)
    if value is not None:
        os.environ[key] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = saved


def _warn_kept(run_name: str, uri: str, run_id: str) -> None:
    kept = kept_locally(run_id)
    if kept is not None:
        print(f"warning: MLflow at {uri} stopped answering during run '{run_name}' "
              f"({_offline.get(uri, 'unreachable')}); {kept[0]} record(s) kept in {kept[1]}",
              file=sys.stderr)


def unsent_file(run_id: str) -> Path:
    """Where records of ``run_id`` that cannot reach the server go (pass it to workers)."""
    return _unsent_files.get(run_id) or (Path.cwd() / UNSENT_FILE).resolve()


def worker_unsent_file(run_id: str | None) -> str | None:
    """:func:`unsent_file` of ``run_id`` as a string for a worker's config (None: no run)."""
    return str(unsent_file(run_id)) if run_id else None


def kept_locally(run_id: str, path: str | Path | None = None) -> tuple[int, Path] | None:
    """(records of ``run_id`` in its unsent file, the file), or None when all were sent."""
    path = Path(path) if path else unsent_file(run_id)
    count = len(unsent_records(path, run_id))
    return (count, path) if count else None


def unsent_records(path: str | Path, run_id: str | None = None) -> list[dict[str, Any]]:
    """The records of an unsent file (of ``run_id`` only, when given); [] without the file.

    Several processes append to one file; a line cut short by a killed writer is skipped.
    """
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and (run_id is None or record.get("run_id") == run_id):
            records.append(record)
    return records


def is_offline(uri: str) -> bool:
    """Whether the tracking server at ``uri`` stopped answering earlier in this process
    (its calls are then only kept locally, see :func:`send_or_keep`)."""
    return uri in _offline


def send_or_keep(uri: str, run_id: str | None, record: dict[str, Any],
                 send: Callable[[], Any], path: str | Path | None = None) -> bool:
    """``send()``; if a tracking server does not answer, append ``record`` to the unsent file
    and return True (False: sent).

    Once a server failed, later calls to it in this process are not tried (only kept), so a
    run does not wait on retries for every metric. Records of a stand-in run id
    (``UNSENT_RUN_PREFIX...``: the run was never created) are only kept. Errors of local
    stores are raised as before.
    """
    if run_id and run_id.startswith(UNSENT_RUN_PREFIX):
        keep_unsent(run_id, record, path)
        return True
    if not is_server(uri):
        send()
        return False
    _fail_fast()
    if uri not in _offline:
        try:
            send()
            return False
        except Exception as err:  # noqa: BLE001  (MlflowException, requests errors...)
            problem = _health_problem(uri, timeout=2.0)
            if problem is None:
                raise  # the server answers: a real error (a bad value...), not an outage
            _offline[uri] = f"{type(err).__name__}: {problem}"
    elif record["kind"] == "end_run":
        _end_without_server(send)
    keep_unsent(run_id, record, path)
    return True


def _end_without_server(end: Callable[[], Any]) -> None:
    """End the local active run without waiting on retries of a server known to be down."""
    with env_restored("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0"), \
            contextlib.suppress(Exception):  # the run is popped before the server call
        end()


def keep_unsent(run_id: str | None, record: dict[str, Any], path: str | Path | None) -> None:
    """Append ``record`` (one JSON line) to the unsent file of ``run_id``."""
    path = Path(path) if path else unsent_file(run_id or "")
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"time": time.time(), "run_id": run_id, **record}, default=str)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")


def _active_run_id() -> str | None:
    run = mlflow.active_run()
    return run.info.run_id if run else None


def log_params(params: Mapping[str, Any], run_id: str | None = None, uri: str | None = None,
               unsent: str | Path | None = None) -> dict[str, str]:
    """Log a (nested) dict as dotted params of the active run (or of ``run_id`` at ``uri``;
    ``unsent``: where records a dead server cannot take go, see :func:`log_metrics`).

    Values are logged in full up to MLflow's limit (``MAX_PARAM_VAL_LENGTH``, 6,000
    characters in MLflow 3.17). A longer value is shortened (it ends with a note saying so);
    its full text goes to the run's artifact ``params_full.json`` (``{key: full value}``, all
    shortened params of the run) and the tag ``wsss.params_shortened`` lists the keys.
    Returns ``{key: full value}`` of the values shortened by this call.
    """
    flat = flatten_params(params)
    stored, full = fit_params(flat)
    if run_id is None:
        run_id, uri = _active_run_id(), mlflow.get_tracking_uri()
    uri = resolve_tracking_uri(uri)
    if full:
        _shortened.setdefault(run_id or "", {}).update(full)
    client = mlflow.MlflowClient(uri)

    def send() -> None:
        for batch in param_batches(stored):
            client.log_batch(run_id, params=[Param(k, v) for k, v in batch.items()])
        if full:
            every = _shortened[run_id or ""]
            client.log_text(run_id, json.dumps(every, indent=2, ensure_ascii=False),
                            PARAMS_ARTIFACT)
            client.set_tag(run_id, SHORTENED_TAG, shorten(", ".join(every), tag_value_limit(),
                                                          f"all keys in {PARAMS_ARTIFACT}"))

    send_or_keep(uri, run_id, {"kind": "params", "values": flat}, send, unsent)
    return full


def param_batches(params: Mapping[str, str]) -> Iterator[dict[str, str]]:
    """``params`` in batches that one ``log_batch`` call takes: at most
    ``MAX_PARAMS_TAGS_PER_BATCH`` entries and, as JSON, under ``MAX_BATCH_LOG_REQUEST_SIZE``
    bytes (non-ASCII text may take 6 bytes a character there)."""
    count = mlflow_limit("MAX_PARAMS_TAGS_PER_BATCH")
    budget = mlflow_limit("MAX_BATCH_LOG_REQUEST_SIZE") // 2  # room for the request's frame
    batch: dict[str, str] = {}
    size = 0
    for key, value in params.items():
        item = len(json.dumps([key, value]))
        if batch and (len(batch) >= count or size + item > budget):
            yield batch
            batch, size = {}, 0
        batch[key], size = value, size + item
    if batch:
        yield batch


def flatten_params(params: Mapping[str, Any]) -> dict[str, str]:
    """A (nested) dict as dotted keys with text values (lists joined by commas), in full."""
    return {k: _param_text(v) for k, v in flatten(params).items()}


def fit_params(flat: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(``flat`` with each value fitted to MLflow's param limit, ``{key: full value}`` of the
    values that had to be shortened)."""
    limit = param_value_limit()
    stored = {k: shorten(v, limit, f"full text in {PARAMS_ARTIFACT}") for k, v in flat.items()}
    return stored, {k: v for k, v in flat.items() if stored[k] != v}


def shorten(text: str, limit: int, where: str) -> str:
    """``text`` when it has at most ``limit`` characters, else its start followed by a note
    ``... [cut: N characters in all; <where>]`` so that the whole has ``limit`` characters."""
    if len(text) <= limit:
        return text
    note = f" ... [cut: {len(text)} characters in all; {where}]"
    return text[:max(limit - len(note), 0)] + note[:limit]


def log_metrics(metrics: Mapping[str, Any], step: int | None = None,
                run_id: str | None = None, uri: str | None = None,
                unsent: str | Path | None = None) -> None:
    """Log the numeric entries of ``metrics`` to the active run (or ``run_id`` at ``uri``).

    ``unsent``: the file for records a dead server cannot take (workers get it from the
    driver's :func:`unsent_file`; default: the run's own, see :func:`start_run`).
    """
    numeric = {k: float(v) for k, v in metrics.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if run_id is None:
        record = {"kind": "metrics", "step": step, "values": numeric}
        send_or_keep(mlflow.get_tracking_uri(), _active_run_id(), record,
                 lambda: mlflow.log_metrics(numeric, step=step), unsent)
        return
    uri = resolve_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)

    def send() -> None:
        for key, value in numeric.items():
            client.log_metric(run_id, key, value, step=step or 0)

    send_or_keep(uri, run_id, {"kind": "metrics", "step": step, "values": numeric}, send, unsent)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    """Copy a local file into the active run's artifacts."""
    run_id, uri = _active_run_id(), mlflow.get_tracking_uri()
    copy = unsent_file(run_id or "").parent / UNSENT_ARTIFACTS / (artifact_path or "")
    record = {"kind": "artifact", "file": str(path), "artifact_path": artifact_path,
              "kept_copy": str(copy / Path(path).name)}
    if send_or_keep(uri, run_id, record,
                lambda: mlflow.log_artifact(str(path), artifact_path=artifact_path)):
        copy.mkdir(parents=True, exist_ok=True)  # the file may be temporary: keep a copy
        shutil.copyfile(path, copy / Path(path).name)


def log_text(text: str, name: str) -> None:
    """Store ``text`` as artifact ``name`` of the active run."""
    send_or_keep(mlflow.get_tracking_uri(), _active_run_id(),
             {"kind": "text", "name": name, "text": text}, lambda: mlflow.log_text(text, name))


def _param_text(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
