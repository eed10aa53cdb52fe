"""The Label Studio implementation of the annotator interface (tasks.annotators.Annotator): people label.

For each image the flow hands over, the annotator makes sure the project has a task for it (the prefilled masks of
the semi-automatic stage attached as a prediction the person starts from), then waits until someone submits an
annotation and returns its brush masks as AnnotatedMask rows. Clicks are the smart keypoints the person placed
(each one a SAM call through the ML backend); seconds are Label Studio's lead time shared over the masks.

A flow uses either this annotator (masks come back through the flow) or `sync.sync_project` on the same project
(masks go straight to the store), not both, or the same masks are recorded twice.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tasks.annotators import AnnotatedMask, AnnotationRequest

from .client import LabelStudioClient
from .convert import BrushRLEError, brush_rle_to_mask, mask_to_coco_rle, percent_to_pixels
from .project import DEFAULT_LABELS, add_tasks, brush_result

logger = logging.getLogger(__name__)


@dataclass
class LabelStudioAnnotator:
    """People labelling in a Label Studio project.

    document_root: the server's local-files root (images must lie under it unless their URIs are http(s)).
    poll_seconds: how often to look for a submitted annotation; timeout_seconds: give up on an image after this long
    (None: wait for ever) and return no masks for it.
    """

    client: LabelStudioClient
    project_id: int
    document_root: str | Path | None = None
    poll_seconds: float = 5.0
    timeout_seconds: float | None = None
    name: str = "labelstudio"
    model_version: str = "prefilled"
    _tasks: dict[str, int] = field(default_factory=dict, repr=False)

    def submit(self, request: AnnotationRequest) -> int:
        """Create (or find) the image's task, with the prefilled masks as a prediction. Returns the task id."""
        if request.image_id in self._tasks:
            return self._tasks[request.image_id]
        images = pd.DataFrame([{"image_id": request.image_id, "uri": request.uri}])
        ids = add_tasks(self.client, self.project_id, images, document_root=self.document_root)
        task_id = ids[request.image_id]
        if request.prefilled:
            result = [brush_result(m, DEFAULT_LABELS[0]) for m in request.prefilled]
            self.client.post(
                "/api/predictions", {"task": task_id, "result": result, "model_version": self.model_version}
            )
        self._tasks[request.image_id] = task_id
        return task_id

    def annotate(self, request: AnnotationRequest) -> list[AnnotatedMask]:
        task_id = self.submit(request)
        deadline = None if self.timeout_seconds is None else time.monotonic() + self.timeout_seconds
        while True:
            task = self.client.get_task(task_id)
            done = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
            if done:
                return self._masks(task_id, done[-1], request.height, request.width)
            if deadline is not None and time.monotonic() >= deadline:
                logger.warning(
                    "no annotation for image %s (task %s) within %s s",
                    request.image_id,
                    task_id,
                    self.timeout_seconds,
                )
                return []
            time.sleep(self.poll_seconds)

    def _masks(self, task_id: int, annotation: dict, height: int, width: int) -> list[AnnotatedMask]:
        results = annotation.get("result") or []
        clicks = [r for r in results if str(r.get("type", "")).lower() == "keypointlabels"]
        points = [list(percent_to_pixels(r["value"]["x"], r["value"]["y"], width, height)) for r in clicks]
        completed_by = annotation.get("completed_by")
        who = completed_by.get("email") if isinstance(completed_by, dict) else None
        masks = []
        for result in results:
            if str(result.get("type", "")).lower() != "brushlabels":
                continue
            try:
                mask = brush_rle_to_mask(
                    result["value"]["rle"], int(result["original_height"]), int(result["original_width"])
                )
            except (KeyError, TypeError, ValueError, BrushRLEError) as exc:
                logger.warning(
                    "task %s annotation %s: skipped a malformed brush result: %s",
                    task_id,
                    annotation.get("id"),
                    exc,
                )
                continue
            masks.append(mask)
        lead = annotation.get("lead_time")
        seconds = float(lead) / len(masks) if masks and lead is not None else 0.0
        out = []
        for mask in masks:
            mask_to_coco_rle(mask)  # fail here, not in the store, if the mask is unencodable
            out.append(
                AnnotatedMask(
                    mask=mask,
                    clicks=len(points),
                    seconds=seconds,
                    point_coords=points,
                    predicted_iou=None,
                    annotator=who or f"{self.name}:{completed_by}",
                )
            )
        return out
