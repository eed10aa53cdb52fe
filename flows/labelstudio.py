"""People in the loop as a team runs it: push a round's images to Label Studio, sync what people did back.

`labelstudio-push` puts a round's images into a project (stage 1 the images alone, people click and SAM answers
through the engine's ML backend; stage 2 with the model's confident masks as the prediction people start from).
`labelstudio-sync` pulls every new, edited and deleted mask since the last sync into the masks table, and emits
`sam-engine.labels.synced`; when enough masks changed since the newest model was trained, the event marks a
retrain due and prefect.yaml's retrain deployment starts. Neither flow waits for people: labelling takes days, a
sync on a schedule picks it up whenever it lands.
"""

from __future__ import annotations

import os

from prefect import flow

from flows.params import LabelStudioPushParams, LabelStudioSyncParams
from flows.progress import flow_step
from flows.steps import check_inputs, ingest_and_select, open_store, run_embed
from tasks.labelstudio.push import confident_masks, push_task, sync_task
from tasks.labelstudio.server import connect, document_root
from tasks.settings import EngineSettings


@flow(name="labelstudio-push", log_prints=True)
def labelstudio_push(params: LabelStudioPushParams | None = None) -> dict:
    """A round's images to a Label Studio project (confident masks as predictions in the semi-automatic stage).
    Returns the push summary (project, tasks added and already there, masks predicted, images skipped)."""
    params = params or LabelStudioPushParams()
    params = check_inputs(params)
    with connect(params.labelstudio_url) as client:  # fail before any work when Label Studio is not there
        client.whoami()
    image_ids, skipped = ingest_and_select(params)
    masks = None
    if params.stage == "semi_automatic":
        image_ids, failed = run_embed(params, image_ids)
        skipped += failed
        with flow_step(f"round {params.round} {params.stage}: confident masks") as report:
            masks = confident_masks(
                open_store(params.store),
                params.model_version,
                image_ids,
                params.autogen,
                params.confident,
                params.round,
                params.stage,
                device=EngineSettings.from_env().device,
                on_progress=report,
            )
    summary = push_task(
        params.store,
        params.labelstudio_url,
        image_ids,
        params.round,
        params.stage,
        project=params.project,
        labels=params.labels,
        masks=masks,
        document_root=params.document_root or document_root(),
        ml_backend_url=params.ml_backend_url or os.environ.get("SAM_ENGINE_BACKEND_URL"),
    )
    summary["skipped_images"] = skipped
    print(
        f"project {summary['project']!r} (id {summary['project_id']}) at {summary['url']}: "
        f"{summary['added']} tasks added, {summary['existing']} already there, "
        f"{summary['predicted_masks']} confident masks on {summary['predicted_tasks']} tasks"
    )
    return summary


@flow(name="labelstudio-sync", log_prints=True)
def labelstudio_sync(params: LabelStudioSyncParams | None = None) -> dict:
    """What people did in the project since the last sync, into the masks table; emits the synced event.
    Returns the sync summary (written, new, edited, deleted, skipped by reason, pending, retrain_due)."""
    params = params or LabelStudioSyncParams()
    open_store(params.store)  # a mistyped store is an error, not a new empty one
    summary = sync_task.with_options(retries=params.retries, retry_delay_seconds=params.retry_delay_seconds)(
        params.store,
        params.labelstudio_url,
        params.project,
        params.round,
        params.stage,
        params.retrain_threshold,
    )
    due = ""
    if summary["pending"] is not None:
        due = f"; {summary['pending']} masks changed since the newest model was trained" + (
            ": retrain due"
            if summary["retrain_due"]
            else f" (a retrain is due at {params.retrain_threshold})"
        )
    print(
        f"project {params.project!r}: {summary['new']} new, {summary['edited']} edited, {summary['deleted']} "
        f"deleted, {summary['skipped']} skipped {summary['skipped_by_reason'] or ''}{due}"
    )
    return summary
