"""Pull human annotations from a Label Studio project into the masks table, incrementally and without loss.

One engine mask = one brushlabels result of one annotation. Its mask_id is derived from (task, annotation,
result id, annotation updated_at), so re-syncing an unchanged annotation yields the same ids and nothing new.
The cursor (per server and project, in the store's `labelstudio_sync` state table) remembers, for every annotation
seen, its updated_at and the mask_id of each of its results. Against it a sync finds:

- a new annotation: its brush results become rows (source="human");
- an edited one (updated_at moved): each result becomes a new row whose `supersedes` names the earlier version;
  a result the edit removed becomes a deleted=True row superseding it;
- a deleted one (gone from Label Studio): every result it had becomes a deleted=True row.

Each task's masks go to the round and stage its data names (`labelstudio push` writes them there), so one project
can hold the images of many rounds; a task without them (made by hand) takes the sync's defaults. A withdrawn
version's tombstone goes where that version lies. Nothing is written until every task has been fetched, so a Label
Studio that fails mid-way leaves the store as it was. Rows are written as one shard per (round, stage), named after
the cursor's sequence number, then the cursor moves: a sync that dies between the two rewrites the same shards next
time (no duplicates). Results that are malformed (bad RLE, wrong
size) or foreign (a result type or a task the engine does not know) are reported with their task id and skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from tasks.retrain import changes_since_trained

from .client import LabelStudioClient
from .convert import BrushRLEError, brush_rle_to_mask, mask_to_coco_rle
from .project import KEYPOINT_NAME, RECT_NAME, TEXT_NAME

logger = logging.getLogger(__name__)

STATE_TABLE = "labelstudio_sync"
SYNC_EVENT = "sam-engine.labels.synced"
LABELLED_STAGES = ("assisted_manual", "semi_automatic")  # the stages whose masks people make
# Prompt results the smart tools and the text box leave in an annotation: the inputs to SAM, not masks.
_PROMPT_TYPES = {"keypointlabels", "rectanglelabels", "keypoint", "rectangle", "textarea"}


@dataclass
class SkippedResult:
    """A result or task the sync could not turn into a mask, and why."""

    task_id: int
    annotation_id: int | None
    result_id: str | None
    reason: str


@dataclass
class SyncReport:
    """What one sync did. written counts every row (new, edited, deleted); shard is None when nothing changed,
    else the shard's name in each (round, stage) of ``partitions``. ``pending`` (set when a retrain threshold was
    given): the masks added, edited or deleted since the newest model was trained; ``retrain_due``: pending reached
    the threshold."""

    project_id: int
    written: int = 0
    new: int = 0
    edited: int = 0
    deleted: int = 0
    skipped: list[SkippedResult] = field(default_factory=list)
    shard: str | None = None
    partitions: list[tuple[int, str]] = field(default_factory=list)
    pending: int | None = None
    retrain_due: bool = False

    def summary(self) -> dict:
        """The counts as plain JSON (skipped results as their reasons, counted)."""
        reasons: dict[str, int] = {}
        for skip in self.skipped:
            reason = skip.reason.split(":")[0]
            reasons[reason] = reasons.get(reason, 0) + 1
        return {
            "project_id": self.project_id,
            "written": self.written,
            "new": self.new,
            "edited": self.edited,
            "deleted": self.deleted,
            "skipped": len(self.skipped),
            "skipped_by_reason": reasons,
            "shard": self.shard,
            "partitions": [list(p) for p in self.partitions],
            "pending": self.pending,
            "retrain_due": self.retrain_due,
        }


def cursor_key(client: LabelStudioClient, project_id: int) -> str:
    return f"{client.url}/projects/{int(project_id)}"


def labelstudio_mask_id(task_id: int, annotation_id: int, result_id: str, updated_at: str) -> str:
    """Deterministic mask_id of one version of one brush result."""
    key = f"labelstudio|{task_id}|{annotation_id}|{result_id}|{updated_at}".encode()
    return "ls-" + hashlib.blake2b(key, digest_size=10).hexdigest()


def read_cursor(store, key: str) -> dict:
    """The cursor {"seq": int, "annotations": {ann_id: {...}}} (empty on the first sync)."""
    row = store.read_state(STATE_TABLE, key)
    if not row:
        return {"seq": 0, "annotations": {}}
    annotations = row["annotations"]
    if isinstance(annotations, str):
        annotations = json.loads(annotations)
    return {"seq": int(row["seq"]), "annotations": annotations}


def write_cursor(store, key: str, cursor: dict) -> None:
    row = {
        "seq": int(cursor["seq"]),
        "annotations": cursor["annotations"],
        "synced_at": datetime.now(UTC).isoformat(),
    }
    store.write_state(STATE_TABLE, key, row)


def _empty_counts(height: int, width: int) -> str:
    return mask_to_coco_rle(np.zeros((height, width), dtype=bool))["counts"]


def _tombstone(
    prev: dict, ann_id: str, result_id: str, annotator: str | None, where: tuple[int, str]
) -> dict:
    """A deleted=True row withdrawing a previous version (an empty mask of the same size), in the round and stage
    of that version (``where``: the sync's defaults, for cursor entries written before versions carried them)."""
    mask_id = "ls-del-" + prev["mask_id"].removeprefix("ls-")
    return {
        "round": int(prev.get("round", where[0])),
        "stage": str(prev.get("stage", where[1])),
        "mask_id": mask_id,
        "image_id": prev["image_id"],
        "counts": _empty_counts(prev["height"], prev["width"]),
        "height": prev["height"],
        "width": prev["width"],
        "source": "human",
        "annotator": annotator,
        "supersedes": prev["mask_id"],
        "deleted": True,
        "point_coords_json": "[]",
    }


def task_partition(task: dict, where: tuple[int, str]) -> tuple[int, str]:
    """The (round, stage) a task's masks belong to: what its data names, else ``where`` (the sync's defaults).
    A round that is not a whole number >= 0, or a stage where people do not label, counts as not named: one task
    edited by hand must not stop every sync."""
    data = task.get("data") or {}
    round = data.get("round")
    if isinstance(round, bool) or not isinstance(round, int | str) or not str(round).isdigit():
        round = where[0]
    stage = data.get("stage") if data.get("stage") in LABELLED_STAGES else where[1]
    return int(round), stage


def _brush_rows(
    task: dict, ann: dict, emails: dict, report: SyncReport, prev: dict | None, where: tuple[int, str]
) -> tuple[list, dict]:
    """Rows for one annotation's brush results, and the cursor entry for it."""
    task_id, ann_id = int(task["id"]), int(ann["id"])
    image_id = (task.get("data") or {}).get("image_id")
    round, stage = task_partition(task, where)
    annotator = emails.get(ann.get("completed_by")) if isinstance(ann.get("completed_by"), int) else None
    if isinstance(ann.get("completed_by"), dict):
        annotator = ann["completed_by"].get("email")
    updated_at = str(ann.get("updated_at") or ann.get("created_at"))
    entry = {"updated_at": updated_at, "results": {}}
    results = [] if ann.get("was_cancelled") else (ann.get("result") or [])
    good: list[tuple[str, np.ndarray]] = []
    unreadable: set[str] = set()  # results skipped now: their earlier version stays current, not withdrawn
    for result in results:
        rid = str(result.get("id")) if isinstance(result, dict) and result.get("id") is not None else None
        if not isinstance(result, dict):
            report.skipped.append(SkippedResult(task_id, ann_id, None, "result is not an object"))
            continue
        rtype = str(result.get("type", "")).lower()
        if rtype in _PROMPT_TYPES and result.get("from_name") in (KEYPOINT_NAME, RECT_NAME, TEXT_NAME):
            continue  # a click, box or phrase given to SAM; the masks it produced are their own brush results
        if rtype != "brushlabels":
            report.skipped.append(SkippedResult(task_id, ann_id, rid, f"foreign result type {rtype!r}"))
            continue
        try:
            value = result["value"]
            if value.get("format", "rle") != "rle":
                raise ValueError(f"brush format {value.get('format')!r} is not 'rle'")
            height, width = int(result["original_height"]), int(result["original_width"])
            mask = brush_rle_to_mask(value["rle"], height, width)
        except (KeyError, TypeError, ValueError, AttributeError, BrushRLEError) as exc:
            report.skipped.append(SkippedResult(task_id, ann_id, rid, f"malformed brush result: {exc}"))
            if rid is not None:
                unreadable.add(rid)
            continue
        if rid is None:
            report.skipped.append(SkippedResult(task_id, ann_id, None, "brush result has no id"))
            continue
        good.append((rid, mask))
    if good and image_id is None:
        report.skipped.append(SkippedResult(task_id, ann_id, None, "foreign task: data has no image_id"))
        good = []
    lead_time = ann.get("lead_time")
    # Label Studio records one lead time per annotation: share it out over the masks it produced.
    seconds = float(lead_time) / len(good) if good and lead_time is not None else None
    rows = []
    prev_results = (prev or {}).get("results", {})
    for rid, mask in good:
        mask_id = labelstudio_mask_id(task_id, ann_id, rid, updated_at)
        height, width = mask.shape
        old = prev_results.get(rid)
        rows.append(
            {
                "round": round,
                "stage": stage,
                "mask_id": mask_id,
                "image_id": str(image_id),
                "counts": mask_to_coco_rle(mask)["counts"],
                "height": height,
                "width": width,
                "source": "human",
                "annotator": annotator,
                "seconds": seconds,
                "point_coords_json": "[]",
                "supersedes": old["mask_id"] if old and old["mask_id"] != mask_id else None,
                "deleted": False,
            }
        )
        entry["results"][rid] = {
            "mask_id": mask_id,
            "image_id": str(image_id),
            "height": height,
            "width": width,
            "round": round,
            "stage": stage,
        }
    for rid, old in prev_results.items():
        if rid in unreadable:
            entry["results"][rid] = old
        elif rid not in entry["results"]:
            rows.append(_tombstone(old, str(ann_id), rid, annotator, where))
    return rows, entry


def collect_changes(
    client: LabelStudioClient, project_id: int, cursor: dict, report: SyncReport, where: tuple[int, str]
) -> tuple:
    """Fetch every task, compare with the cursor. Returns (rows, new annotations dict). Writes nothing.
    ``where``: the (round, stage) of tasks whose data names none."""
    tasks = list(client.iter_tasks(project_id))  # all of it first: a failure here leaves the store untouched
    emails = client.user_emails()
    seen = cursor["annotations"]
    rows: list[dict] = []
    now_annotations: dict[str, dict] = {}
    for task in tasks:
        for ann in task.get("annotations") or []:
            ann_id = str(ann["id"])
            prev = seen.get(ann_id)
            updated_at = str(ann.get("updated_at") or ann.get("created_at"))
            if prev is not None and prev["updated_at"] == updated_at:
                now_annotations[ann_id] = prev
                continue
            ann_rows, entry = _brush_rows(task, ann, emails, report, prev, where)
            if prev is None:
                report.new += sum(1 for r in ann_rows if not r["deleted"])
            else:
                report.edited += sum(1 for r in ann_rows if not r["deleted"])
            report.deleted += sum(1 for r in ann_rows if r["deleted"])
            rows.extend(ann_rows)
            now_annotations[ann_id] = entry
    for ann_id, prev in seen.items():
        if ann_id not in now_annotations:  # deleted in Label Studio
            for rid, old in prev["results"].items():
                rows.append(_tombstone(old, ann_id, rid, None, where))
                report.deleted += 1
    return rows, now_annotations


def _prefect_listening() -> bool:
    """True when a Prefect server is configured (PREFECT_API_URL) or this runs inside a flow run. Without either,
    emitting would first start a temporary server (about 15 s) just to drop the event on exit."""
    if os.environ.get("PREFECT_API_URL"):
        return True
    try:
        from prefect.context import FlowRunContext

        return FlowRunContext.get() is not None
    except Exception:  # noqa: BLE001
        return False


def emit_synced_event(project_id: int, url: str, report: SyncReport, round: int) -> None:
    """Tell Prefect that human labels arrived. The resource's ``sam-engine.retrain-due`` label ("true"/"false")
    is what prefect.yaml's retrain trigger matches, so a retrain follows enough new labels, not every sync; the
    payload's ``round`` is the highest round holding masks (the retrain learns rounds <= it). Never fails the
    sync: the labels are already in the store."""
    try:
        from prefect.events import emit_event

        emit_event(
            event=SYNC_EVENT,
            resource={
                "prefect.resource.id": f"sam-engine.labelstudio.project.{int(project_id)}",
                "sam-engine.retrain-due": "true" if report.retrain_due else "false",
            },
            payload={"labelstudio_url": url, "round": int(round), **report.summary()},
        )
    except Exception as exc:  # noqa: BLE001 - an event is a notification; the labels are already safe
        logger.warning("could not emit %s for project %s: %s", SYNC_EVENT, project_id, exc)


def sync_project(
    client: LabelStudioClient,
    store,
    project_id: int,
    round: int,
    stage: str,
    emit: bool | None = None,
    retrain_threshold: int | None = None,
) -> SyncReport:
    """Pull what changed in a Label Studio project since the last sync into `store`'s masks table.

    round, stage: where the masks of tasks whose data names no round and stage go (`labelstudio push` names
    them). emit: send the `sam-engine.labels.synced` Prefect event after rows were written (None: when a Prefect
    server or flow run is there to receive it). retrain_threshold: count the masks changed since the newest model
    was trained and mark the event's retrain due at this many (None: never due). Returns a SyncReport; skipped
    results are also logged with their task id.
    """
    key = cursor_key(client, project_id)
    cursor = read_cursor(store, key)
    report = SyncReport(project_id=int(project_id))
    rows, annotations = collect_changes(client, project_id, cursor, report, (int(round), stage))
    for skip in report.skipped:
        logger.warning(
            "Label Studio task %s annotation %s result %s skipped: %s",
            skip.task_id,
            skip.annotation_id,
            skip.result_id,
            skip.reason,
        )
    seq = int(cursor["seq"])
    if rows:
        seq += 1
        shard = f"labelstudio-p{int(project_id)}-s{seq:06d}"
        df = pd.DataFrame(rows)
        df["created_at"] = pd.Timestamp.now(tz="UTC")
        for (part_round, part_stage), part in df.groupby(["round", "stage"], sort=True):
            store.write_masks(
                part.drop(columns=["round", "stage"]), round=int(part_round), stage=part_stage, shard=shard
            )
            report.partitions.append((int(part_round), str(part_stage)))
        report.written, report.shard = len(rows), shard
    if rows or annotations != cursor["annotations"]:
        write_cursor(store, key, {"seq": seq, "annotations": annotations})
    latest_round = max([r for r, _ in report.partitions] or [int(round)])
    if retrain_threshold is not None:
        report.pending, store_round = changes_since_trained(store)
        if store_round is not None:
            latest_round = max(latest_round, store_round)
        report.retrain_due = report.pending >= retrain_threshold
    if emit is None:
        emit = bool(rows) and _prefect_listening()
    if rows and emit:
        emit_synced_event(project_id, client.url, report, latest_round)
    return report
