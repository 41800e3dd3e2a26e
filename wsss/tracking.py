"""MLflow tracking: default store, run context, flattened params, metrics and artifacts.

The default store is a SQLite file ``mlflow.db`` in the working directory with artifacts under
``mlruns/`` beside it; ``--tracking-uri`` or ``$MLFLOW_TRACKING_URI`` override it. Open it with
``mlflow ui --backend-store-uri sqlite:///mlflow.db``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

from wsss.config import flatten

MAX_PARAM_LENGTH = 500


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``."""
    if uri:
        return uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def _artifact_location(uri: str) -> str | None:
    """Local stores keep artifacts in ``mlruns/`` next to the database file."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlruns").resolve().as_uri()
    return None


def ensure_experiment(name: str, uri: str) -> str:
    """Id of experiment ``name`` in the store at ``uri``, created if missing."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=_artifact_location(uri))


@contextlib.contextmanager
def start_run(run_name: str, *, experiment: str = "wsss", uri: str | None = None,
              params: Mapping[str, Any] | None = None, tags: Mapping[str, str] | None = None,
              parent_run_id: str | None = None) -> Iterator[Any]:
    """Open an MLflow run (nested under ``parent_run_id`` when given) and log flat params.

    Yields the ``mlflow.ActiveRun``; the run ends FINISHED, or FAILED if the body raises.
    """
    import mlflow

    uri = resolve_tracking_uri(uri)
    mlflow.set_tracking_uri(uri)
    experiment_id = ensure_experiment(experiment, uri)
    all_tags = dict(tags or {})
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    with mlflow.start_run(run_name=run_name, experiment_id=experiment_id, tags=all_tags,
                          nested=mlflow.active_run() is not None) as run:
        if params:
            log_params(params)
        yield run


def log_params(params: Mapping[str, Any]) -> None:
    """Log a (nested) dict as dotted params, values cut to MLflow's length limit."""
    import mlflow

    mlflow.log_params(flatten_params(params))


def flatten_params(params: Mapping[str, Any]) -> dict[str, str]:
    """A (nested) dict as dotted keys with string values cut to MLflow's length limit."""
    return {k: _param_value(v) for k, v in flatten(params).items()}


def log_metrics(metrics: Mapping[str, Any], step: int | None = None,
                run_id: str | None = None, uri: str | None = None) -> None:
    """Log the numeric entries of ``metrics`` to the active run (or ``run_id`` at ``uri``)."""
    import mlflow

    numeric = {k: float(v) for k, v in metrics.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if run_id is None:
        mlflow.log_metrics(numeric, step=step)
        return
    client = mlflow.MlflowClient(resolve_tracking_uri(uri))
    for key, value in numeric.items():
        client.log_metric(run_id, key, value, step=step or 0)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    """Copy a local file into the active run's artifacts."""
    import mlflow

    mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_text(text: str, name: str) -> None:
    """Store ``text`` as artifact ``name`` of the active run."""
    import mlflow

    mlflow.log_text(text, name)


def _param_value(value: Any) -> str:
    text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return text[:MAX_PARAM_LENGTH]
