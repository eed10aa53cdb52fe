"""One round of the data engine: run a chosen stage, retrain on everything accepted so far, evaluate.

This is the loop that made SA-1B: each stage's masks teach the next model, and the better model makes the next
round's annotation cheaper (fewer clicks per mask) and its automatic masks more numerous and more precise.
With ``calibration``, the new version's automatic-mask thresholds are measured on labelled images
(tasks.calibrate) for the next round's filters and this round's evaluation.
The round's figures (stage figures plus the new model's held-out metrics) go to the rounds table and to the
run's artifacts.
"""

from __future__ import annotations

from prefect import flow

from flows.assisted_manual import assisted_manual
from flows.fully_automatic import fully_automatic
from flows.params import RoundParams
from flows.progress import flow_step
from flows.semi_automatic import semi_automatic
from flows.steps import calibrate_stage_crops, check_after_training, check_inputs, now, why_no_retrain
from tasks.calibrate import calibrate
from tasks.evaluate import evaluate
from tasks.report import publish_report, record_round
from tasks.retrain import retrain
from tasks.runlog import run_logger

STAGE_FLOWS = {
    "assisted_manual": assisted_manual,
    "semi_automatic": semi_automatic,
    "fully_automatic": fully_automatic,
}


@flow(name="data-engine-round", log_prints=True)
def data_engine_round(params: RoundParams | None = None, train_backend: str = "ray") -> dict:
    """Run ``params.stage``, then retrain from ``params.model_version``, calibrate and evaluate the new version.

    Returns the stage's figures with "new_model_version" and the evaluation metrics merged in. When there is
    nothing to train on (the stage kept no mask and no earlier round left one), the retrain is skipped, its
    reason is under "retrain_skipped", and the calibration and evaluation take ``params.model_version``.
    """
    params = params or RoundParams()
    started = now()
    params = check_inputs(params, calibrating=params.calibration)
    check_after_training(params.calibration, params.evaluation, params.retrain)
    calibrate_stage_crops(params, params.calibration)
    figures = STAGE_FLOWS[params.stage](params.stage_params())
    skip = why_no_retrain(params, figures) if params.retrain is not None else None
    if skip is not None:
        run_logger().warning("retrain skipped: %s", skip)
        figures["retrain_skipped"] = skip
    elif params.retrain is not None:
        version = params.new_model_version or f"r{params.round}"
        with flow_step(f"retraining {version}: steps") as report:
            retrain(
                params.store,
                params.model_version,
                version,
                params.round,
                backend=train_backend,
                **params.retrain.retrain_args(),
                on_progress=report,
            )
        figures["new_model_version"] = version
    evaluated = figures.get("new_model_version", params.model_version)
    if params.calibration is not None:
        with flow_step(f"calibrating {evaluated}: images") as report:
            calibrate(params.store, evaluated, params.calibration, on_progress=report)
    if params.evaluation is not None:
        with flow_step(f"evaluating {evaluated}: images") as report:
            metrics = evaluate(params.store, evaluated, **dict(params.evaluation), on_progress=report)
        figures.update({k: v for k, v in metrics.items() if k != "model_version"})
        figures["evaluated_model_version"] = evaluated
    record_round(params.store, figures, started, now())
    publish_report(params.store, figures, 0)
    return figures
