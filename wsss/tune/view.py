"""The MLflow UI link a sweep prints: its trials sorted by objective, the objective in view.

The UI's runs table keeps its search, sort and filters in the URL (``searchFilter``,
``orderByKey``, ``orderByAsc``...), but not which columns it shows: metrics and params are
hidden until picked by hand. Its "share view" feature stores a whole view, columns included,
as the JSON value of the experiment tag ``mlflow.sharedViewState.<key>`` and opens it from the
URL parameter ``viewStateShareKey=<key>`` (read from MLflow's UI code, ``mlflow/server/js``).
:func:`share_trials_view` stores such a view of the sweep's trials (the parent run's children
only, best objective first, the objective, pseudo-mask mIoU, degenerate share and the knobs
shown) and :func:`runs_view` prints the link that opens it.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from wsss.commands import command_line
from wsss.tracking import is_server
from wsss.tune.tracking import mlflow_client

SHARED_VIEW_TAG = "mlflow.sharedViewState."  # MLflow's own prefix (its UI's share button)
SHOWN_METRICS = ("objective", "pseudo_miou", "degenerate_share")


def trials_view_state(parent_run_id: str, knobs: Sequence[str],
                      objective: str = "objective") -> dict[str, Any]:
    """The UI view of one sweep's trials: the children of ``parent_run_id``, sorted by
    ``objective`` (best first), showing the metrics of :data:`SHOWN_METRICS`, each knob's param
    and the trial's status tag."""
    metrics = dict.fromkeys([objective, *SHOWN_METRICS])
    return {"searchFilter": f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
            "orderByKey": f"metrics.`{objective}`", "orderByAsc": False,
            "selectedColumns": [*(f"metrics.`{m}`" for m in metrics),
                                *(f"params.`{k}`" for k in knobs), "tags.`wsss.status`"]}


def share_trials_view(uri: str, experiment_id: str, parent_run_id: str,
                      knobs: Sequence[str], objective: str = "objective") -> str:
    """Store :func:`trials_view_state` on the experiment (tag ``mlflow.sharedViewState.<key>``);
    returns its key (``wsss-<parent run id>``) for :func:`runs_view`."""
    key = f"wsss-{parent_run_id}"  # one view per sweep: a resumed sweep updates its own
    state = trials_view_state(parent_run_id, knobs, objective)
    mlflow_client(uri).set_experiment_tag(experiment_id, SHARED_VIEW_TAG + key,
                                          json.dumps(state))
    return key


def stored_view_key(uri: str, experiment_id: str, parent_run_id: str) -> str | None:
    """The key of the trials view :func:`share_trials_view` stored for the sweep
    ``parent_run_id`` (None when it stored none: a sweep from before, or a store that did not
    answer then)."""
    key = f"wsss-{parent_run_id}"
    tags = mlflow_client(uri).get_experiment(experiment_id).tags
    return key if SHARED_VIEW_TAG + key in tags else None


def runs_view(uri: str, experiment_id: str, share_key: str | None = None) -> str:
    """Lines telling how to browse the experiment's runs: the MLflow UI command for a local
    store (its default address; the command runs as printed in a fresh shell) or the server's
    own address, each opened on the runs table (the UI's "Model training" view, not its GenAI
    overview); with ``share_key``, on the view :func:`share_trials_view` stored under it."""
    query = (f"viewStateShareKey={share_key}&" if share_key else "") + \
        "workflowType=machine_learning"
    page = f"#/experiments/{experiment_id}/runs?{query}"
    if is_server(uri):
        return f"  runs: {uri.rstrip('/')}/{page}"
    return (f"  {command_line('mlflow', 'ui', '--backend-store-uri', uri)}\n"
            f"  then open http://127.0.0.1:5000/{page}")
