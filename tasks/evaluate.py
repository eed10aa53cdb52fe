"""Evaluate: held-out metrics of a model version, as in the SAM paper, on the store's evaluation images.

Interactive: mIoU after 1, 2, 3, 5, 9 clicks and NoC@85/90 with the paper's click protocol
(``sam_core.evaluate.evaluate_interactive``). Automatic: precision and recall of the automatic masks at IoU 0.5
and 0.75, pooled over images (matched masks / all predicted, matched masks / all ground truth). Ground truth comes
from a COCO file matched to the images by file name; evaluation images are those of ``split`` (default "test"),
which the stage flows never annotate, so no round trains on them.
"""

from __future__ import annotations

from collections.abc import Callable

from prefect import task

from sam_core.evaluate import automatic_precision_recall, evaluate_interactive
from stores import Store
from tasks.autogen import AutogenSettings, make_generator
from tasks.calibrate import calibrated_settings
from tasks.filter import FilterSettings, filter_records, keeps_nothing
from tasks.ground_truth import evaluation_set
from tasks.models import load_model
from tasks.progress import CACHE_POLICY, OnProgress
from tasks.runlog import run_logger


class _Reporting:
    """A dataset that reports how many items came before each one read: sam_core's evaluate_interactive reads its
    dataset by index, one image at a time, and takes no callback."""

    def __init__(self, items: list, report: Callable[[int], None]):
        self.items, self.report = items, report

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        self.report(index)
        return self.items[index]


def _no_report(done: int, total: int) -> None:
    pass


@task(name="evaluate", retries=1, retry_delay_seconds=2, cache_policy=CACHE_POLICY)
def evaluate(
    store_url: str,
    model_version: str,
    ground_truth: str,
    split: str = "test",
    max_images: int | None = 16,
    max_clicks: int = 9,
    max_masks_per_image: int | None = None,
    autogen: AutogenSettings | None = None,
    filter: FilterSettings | None = None,
    amg_max_images: int | None = None,
    device: str = "cpu",
    on_progress: OnProgress | None = None,
) -> dict:
    """Metrics of ``model_version``: {"miou@1", "miou@5", ..., "noc@90", "amg_precision", "amg_recall", ...}.

    ``miou@k`` is the "confident" choice (the mask the model rates best, what a user sees after one click); the
    oracle variants are kept under their full names. ``autogen``: generator settings for precision/recall
    (None: skip the automatic part). ``filter``: the fully automatic stage's filter on top of the generator (its
    calibrated thresholds included), so that precision/recall measure the masks that stage would keep.
    ``max_masks_per_image``: the clicks score at most this many ground-truth masks an image, drawn at random
    with a fixed seed, so every version is scored on the same masks (None: all).
    ``amg_max_images``: score the automatic masks on the first this many images only (None: all).
    ``on_progress(images done, images in all)``: each image counts once for the clicks and once for the automatic
    masks (the CLI's progress bar).
    """
    store = Store(store_url)
    model = load_model(store, model_version, device)
    samples = evaluation_set(store, ground_truth, split, max_images)
    automatic = (samples[:amg_max_images] if amg_max_images else samples) if autogen is not None else []
    report = on_progress or _no_report
    total = len(samples) + len(automatic)
    interactive = evaluate_interactive(
        model,
        _Reporting([(image, masks) for _, image, masks in samples], lambda done: report(done, total)),
        max_clicks=max_clicks,
        max_masks_per_image=max_masks_per_image,
    )
    report(len(samples), total)
    metrics = {
        "model_version": model_version,
        "eval_images": len(samples),
        "eval_masks": interactive["masks"],
    }
    for key, value in interactive.items():
        if key.endswith("_confident"):
            metrics[key.removesuffix("_confident")] = value
        elif key.endswith("_oracle"):
            metrics[key] = value
    if autogen is not None:
        if filter is not None:
            autogen, filter, point = calibrated_settings(store, model_version, autogen, filter)
            if point is not None:  # the operating point (None where the target cannot be met)
                feasible = point["feasible"]
                metrics["amg_pred_iou_thresh"] = point["pred_iou_thresh"] if feasible else None
                metrics["amg_quality_thresh"] = point["quality_thresh"] if feasible else None
                metrics["amg_stability_thresh"] = point["stability_score_thresh"] if feasible else None
        generator = make_generator(model, autogen)
        generator.output_mode = "binary_mask"
        matched = predicted = truth = 0
        # An unreachable operating point keeps nothing: precision 0 and recall 0 without the grid's decoding.
        skip = filter is not None and keeps_nothing(filter)
        for done, (_, image, masks) in enumerate(automatic, start=len(samples) + 1):
            records = [] if skip else generator.generate(image)
            if filter is not None:
                records = filter_records(records, image.shape[:2], filter)
            found = [r["segmentation"] for r in records]
            pr = automatic_precision_recall(found, masks, thresholds=(0.5,))
            matched += round(pr["recall@0.5"] * len(masks))
            predicted += len(found)
            truth += len(masks)
            report(done, total)
        metrics["amg_precision"] = matched / predicted if predicted else 0.0
        metrics["amg_recall"] = matched / truth if truth else 0.0
        metrics["amg_masks_per_image"] = predicted / len(automatic)
        metrics["amg_images"] = len(automatic)
    run_logger().info("evaluated %s: %s", model_version, {k: metrics.get(k) for k in ("miou@1", "miou@5")})
    return metrics
