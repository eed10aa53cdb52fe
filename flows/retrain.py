"""Retrain: train a new model version on every accepted mask so far, register it, and evaluate it.

Also the target of the "sam-engine.labels.synced" event trigger in prefect.yaml: when Label Studio edits have been
synced into the store, a retrain starts on them.
"""

from __future__ import annotations

from prefect import flow

from flows.params import RetrainParams
from flows.progress import flow_step
from flows.steps import check_after_training, open_store
from tasks.calibrate import calibrate
from tasks.evaluate import evaluate
from tasks.models import check_model, resolve_version
from tasks.retrain import retrain


@flow(name="retrain", log_prints=True)
def retrain_flow(params: RetrainParams | None = None, backend: str = "ray") -> dict:
    """Retrain from ``parent_version`` on the store's masks of rounds <= ``round``; evaluate if asked.

    Returns the new models row, with the evaluation metrics under "evaluation" when evaluated.
    """
    params = params or RetrainParams()
    params = params.model_copy(
        update={"parent_version": resolve_version(open_store(params.store), params.parent_version)}
    )
    check_model(open_store(params.store), params.parent_version)
    check_after_training(params.calibration, params.evaluation, params.train)
    version = params.model_version or f"{params.parent_version}-r{params.round}"
    with flow_step(f"retraining {version}: steps") as report:
        row = retrain(
            params.store,
            params.parent_version,
            version,
            params.round,
            backend=backend,
            **params.train.retrain_args(),
            on_progress=report,
        )
    if params.calibration is not None:
        with flow_step(f"calibrating {version}: images") as report:
            row["calibration"] = calibrate(params.store, version, params.calibration, on_progress=report)
    if params.evaluation is not None:
        with flow_step(f"evaluating {version}: images") as report:
            row["evaluation"] = evaluate(params.store, version, **dict(params.evaluation), on_progress=report)
    return row
