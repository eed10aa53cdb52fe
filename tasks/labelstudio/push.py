"""Push a round's images to a Label Studio project, and pull what people did there: the Prefect tasks behind the
`labelstudio-push` and `labelstudio-sync` flows.

Push makes one task per image whose data names the image, the round and the stage; in the semi-automatic stage the
model's confident masks ride along as the task's prediction, which a person starts from. Push writes no masks: a
prediction becomes a mask only when a person submits it, and then the sync records it (source="human"), so nothing
is counted twice and a mask nobody accepted never trains the model. A rerun adds no task twice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd
from prefect import task

from stores import Store, mask_id_for
from tasks.autogen import AutogenSettings, make_generator
from tasks.filter import FilterSettings
from tasks.prefill import confident_rows
from tasks.progress import OnProgress
from tasks.shards import Shard
from tasks.stage import StageContext

from .project import add_tasks, ensure_ml_backend, ensure_project, existing_tasks
from .server import connect
from .sync import sync_project


@dataclass
class PushReport:
    """What one push did: tasks added and found already in the project, and the predicted masks sent."""

    project_id: int
    project: str
    url: str
    added: int
    existing: int
    predicted_tasks: int
    predicted_masks: int
    ml_backend: str | None = None

    def summary(self) -> dict:
        return asdict(self)


def confident_masks(
    store,
    model_version: str,
    image_ids: list[str],
    autogen: AutogenSettings,
    confident: FilterSettings,
    round: int,
    stage: str,
    device: str = "cpu",
    on_progress: OnProgress | None = None,
) -> pd.DataFrame:
    """The model's confident automatic masks of the images (masks-table rows, source="model"), from their cached
    embeddings; the thresholds come from the model's calibration when ``confident`` names a target precision.
    ``on_progress(images done, images)`` after each image."""
    shard = Shard(store.url, model_version, round, stage, name="push", image_ids=tuple(image_ids))
    ctx = StageContext.open(shard, device, store)
    autogen, confident = ctx.calibrated(autogen, confident)
    generator = make_generator(ctx.model, autogen)
    images = store.images().set_index("image_id")
    frames = []
    for done, image_id in enumerate(image_ids, 1):
        rows = confident_rows(ctx, generator, image_id, images.loc[image_id], confident)
        if len(rows):
            frames.append(rows)
        if on_progress is not None:
            on_progress(done, len(image_ids))
    if not frames:
        return pd.DataFrame()
    masks = pd.concat(frames, ignore_index=True)
    # The id the store would give each mask in this round and stage: a prediction's result id carries it.
    masks["mask_id"] = [
        mask_id_for(m.image_id, round, stage, m.source, m.counts) for m in masks.itertuples(index=False)
    ]
    return masks


def push_images(
    client,
    store,
    image_ids: list[str],
    round: int,
    stage: str,
    project: str,
    labels: list[str],
    masks: pd.DataFrame | None = None,
    document_root: str | None = None,
    ml_backend_url: str | None = None,
) -> PushReport:
    """One task per image in the project titled ``project`` (made when missing), its data naming the round and
    stage; ``masks`` (rows with image_id, mask_id, counts, height, width, predicted_iou, model_version) as each
    image's prediction. Images already in the project are left as they are. ``ml_backend_url``: the SAM ML
    backend to connect to the project (when it is not yet), with the token in SAM_ENGINE_BACKEND_TOKEN."""
    import os

    project_id = ensure_project(client, project, labels)
    if ml_backend_url:
        ensure_ml_backend(client, project_id, ml_backend_url, os.environ.get("SAM_ENGINE_BACKEND_TOKEN"))
    before = existing_tasks(client, project_id)
    images = store.images()
    images = images[images["image_id"].isin(image_ids)][["image_id", "uri"]]
    new = images[~images["image_id"].astype(str).isin(before)]
    new_masks = None
    if masks is not None and len(masks):
        new_masks = masks[masks["image_id"].isin(new["image_id"])]
    add_tasks(
        client,
        project_id,
        images,
        masks=new_masks,
        document_root=document_root,
        label=labels[0],
        data={"round": int(round), "stage": stage},
        known=before,
    )
    return PushReport(
        project_id=project_id,
        project=project,
        url=client.url,
        added=len(new),
        existing=len(images) - len(new),
        predicted_tasks=0 if new_masks is None else int(new_masks["image_id"].nunique()),
        predicted_masks=0 if new_masks is None else len(new_masks),
        ml_backend=ml_backend_url,
    )


@task(name="labelstudio-push", retries=2, retry_delay_seconds=5, task_run_name="push-r{round}-{stage}")
def push_task(
    store_url: str, labelstudio_url: str | None, image_ids: list[str], round: int, stage: str, **push
) -> dict:
    """push_images as a Prefect task, on the store and the Label Studio at these URLs; ``push``: push_images's
    keywords from ``project`` on. Safe to retry: a rerun skips the tasks already made. Returns the summary."""
    with connect(labelstudio_url) as client:
        report = push_images(client, Store(store_url), image_ids, round, stage, **push)
    return report.summary()


@task(name="labelstudio-sync", task_run_name="sync-{project}")
def sync_task(
    store_url: str,
    labelstudio_url: str | None,
    project: str,
    round: int,
    stage: str,
    retrain_threshold: int | None,
) -> dict:
    """Sync the project titled ``project`` into the store and emit the synced event (tasks.labelstudio.sync).
    Safe to retry: nothing is written until every task was fetched, and a rerun writes nothing twice."""
    with connect(labelstudio_url) as client:
        found = client.find_project(project)
        if found is None:
            raise ValueError(
                f"no Label Studio project titled {project!r} at {client.url}: push images to it first "
                "(sam-engine labelstudio push)"
            )
        report = sync_project(
            client,
            Store(store_url),
            int(found["id"]),
            round,
            stage,
            emit=True,
            retrain_threshold=retrain_threshold,
        )
    return report.summary()
