"""Annotate: the assisted-manual stage. An annotator labels each image with SAM answering every click.

The annotator is chosen by :class:`AnnotatorSettings`: the simulated annotator (ground truth from a COCO file,
the paper's click protocol) or, for people, Label Studio (``tasks/labelstudio/annotator.py``: each image becomes
a task, prefilled masks a prediction, and the flow waits for the person's submitted annotation). Per image the predictor
gets the cached embedding, so a click costs one mask-decoder pass. Accepted masks are written with
``source="human"``, the annotator's name, its clicks and seconds.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Literal

from pydantic import BaseModel, Field

from sam_core.predictor import SamPredictor
from tasks.annotators import AnnotationOrder, AnnotationRequest, SimulatedAnnotator
from tasks.ground_truth import load_ground_truth
from tasks.labelstudio.annotator import LabelStudioAnnotator
from tasks.labelstudio.client import LabelStudioClient
from tasks.progress import OnProgress
from tasks.records import mask_rows
from tasks.shards import Shard, ShardSummary
from tasks.stage import StageContext, shard_task


class AnnotatorSettings(BaseModel):
    """Who annotates and, for the simulated annotator, how it behaves (see tasks.annotators)."""

    kind: Literal["simulated", "labelstudio"] = Field(
        "simulated", description="'simulated' (ground truth, click protocol) or 'labelstudio' (people)"
    )
    ground_truth: str | None = Field(
        None, description="COCO instances JSON with the images' ground truth (URL)"
    )
    # The simulated annotator's own fields: their defaults are its defaults.
    iou_target: float = Field(
        SimulatedAnnotator.iou_target, gt=0.0, le=1.0, description="accept a mask at this IoU with the truth"
    )
    max_clicks: int = Field(SimulatedAnnotator.max_clicks, ge=1, le=50)
    seconds_per_object: float = Field(SimulatedAnnotator.seconds_per_object, ge=0.0)
    seconds_per_click: float = Field(SimulatedAnnotator.seconds_per_click, ge=0.0)
    brush_seconds: float = Field(SimulatedAnnotator.brush_seconds, ge=0.0)
    seconds_per_image: float | None = Field(
        SimulatedAnnotator.seconds_per_image, gt=0.0, description="time budget per image (None: no limit)"
    )
    order: AnnotationOrder = Field(
        SimulatedAnnotator.order,
        description="'largest' objects first, or 'levels' in turn (whole, part, subpart: more diverse masks)",
    )

    labelstudio_project: int | None = Field(
        None, ge=1, description="Label Studio project id (server and token: SAM_ENGINE_LS_URL / _TOKEN)"
    )
    labelstudio_document_root: str | None = Field(None, description="Label Studio's local-files root")
    labelstudio_timeout_seconds: float | None = Field(
        None, gt=0.0, description="give up on an image after this long (None: wait for a person)"
    )

    def build(self):
        """The annotator object these settings describe."""
        if self.kind == "labelstudio":
            if self.labelstudio_project is None:
                raise ValueError("the labelstudio annotator needs labelstudio_project (a project id)")
            return LabelStudioAnnotator(
                client=LabelStudioClient(),
                project_id=self.labelstudio_project,
                document_root=self.labelstudio_document_root,
                timeout_seconds=self.labelstudio_timeout_seconds,
            )
        if self.ground_truth is None:
            raise ValueError(
                "the simulated annotator needs ground_truth: a COCO JSON URL with the images' masks"
            )
        return SimulatedAnnotator(**self.model_dump(include={f.name for f in fields(SimulatedAnnotator)}))


def annotation_request(ctx: StageContext, predictor, image_id, image, ground_truth, prefilled=()):
    """Set the image's cached embedding on ``predictor`` (a SamPredictor of ``ctx.model``) and wrap everything
    the annotator needs."""
    size = (int(image["height"]), int(image["width"]))
    predictor.set_embedding(ctx.embedding(image_id), size)
    truth = None
    if ground_truth is not None:
        if not ground_truth.has(image["uri"]):
            raise ValueError(f"no ground truth for {image['uri']} in {ground_truth.uri}")
        truth = ground_truth.masks_for(image["uri"])
    return AnnotationRequest(
        image_id=image_id,
        uri=image["uri"],
        height=size[0],
        width=size[1],
        predictor=predictor,
        prefilled=list(prefilled),
        ground_truth=truth,
    )


def annotated_rows(annotated, image_id, *, model_version):
    """Masks-table rows (source="human") from the annotator's :class:`AnnotatedMask` list."""
    return mask_rows(
        image_id,
        [a.mask for a in annotated],
        source="human",
        model_version=model_version,
        predicted_iou=[a.predicted_iou for a in annotated],
        point_coords=[a.point_coords for a in annotated],
        annotator=annotated[0].annotator if annotated else None,
        clicks=[a.clicks for a in annotated],
        seconds=[a.seconds for a in annotated],
    )


@shard_task("annotate")
def annotate(
    shard: Shard,
    annotator: AnnotatorSettings,
    device: str = "cpu",
    on_progress: OnProgress | None = None,
) -> ShardSummary:
    """Assisted-manual annotation of one shard of images; writes the shard and returns its summary.
    ``on_progress(images done, images of the shard)`` is called after each image."""
    ctx = StageContext.open(shard, device)
    who = annotator.build()
    predictor = SamPredictor(ctx.model)
    truth = load_ground_truth(annotator.ground_truth) if annotator.ground_truth else None

    def per_image(image_id, image):
        annotated = who.annotate(annotation_request(ctx, predictor, image_id, image, truth))
        return annotated_rows(annotated, image_id, model_version=shard.model_version)

    return ctx.run_shard({"annotator": annotator.model_dump()}, per_image, on_progress)
