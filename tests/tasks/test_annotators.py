"""The simulated annotator: clicks by the protocol, accepts at the IoU target, brushes when clicks run out."""

import numpy as np
import pytest

from sam_core.mask_utils import binary_iou
from tasks.annotators import AnnotationRequest, SimulatedAnnotator, labelling_order


def _disc(cx, cy, r, size=64):
    yy, xx = np.mgrid[0:size, 0:size]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


class ShrinkingPredictor:
    """Answers each click with the ground-truth object under the first click, eroded until ``exact_after``
    clicks: a predictor that gets better the more it is told. Records what it was asked."""

    def __init__(self, objects, exact_after=2):
        self.objects = objects
        self.exact_after = exact_after
        self.calls = []

    def predict(self, point_coords, point_labels, mask_input=None, multimask_output=True):
        self.calls.append(
            (point_coords.copy(), point_labels.copy(), mask_input is not None, multimask_output)
        )
        x, y = point_coords[0].astype(int)
        obj = next(m for m in self.objects if m[y, x])
        mask = obj.copy()
        if len(point_coords) < self.exact_after:
            rows = np.nonzero(obj.any(axis=1))[0]
            mask[: (rows.min() + rows.max()) // 2] = False  # the object's top half is missing
        n = 3 if multimask_output else 1
        masks = np.stack([mask] * n)
        return masks, np.linspace(0.9, 0.5, n), np.zeros((n, 16, 16), np.float32)


def _request(objects, predictor, prefilled=()):
    return AnnotationRequest(
        image_id="img",
        uri="mem://img.png",
        height=64,
        width=64,
        predictor=predictor,
        prefilled=list(prefilled),
        ground_truth=objects,
    )


def test_clicks_until_iou_target_then_accepts():
    objects = [_disc(20, 20, 10), _disc(45, 45, 6)]
    predictor = ShrinkingPredictor(objects, exact_after=2)
    out = SimulatedAnnotator(iou_target=0.9, seconds_per_image=None).annotate(_request(objects, predictor))
    assert len(out) == 2
    assert [m.clicks for m in out] == [2, 2]
    assert all(binary_iou(m.mask, o) == 1.0 for m, o in zip(out, objects, strict=True))
    assert not out[0].brushed
    # first click multimask, the correction click single-mask with the previous logits fed back
    assert predictor.calls[0][3] is True and predictor.calls[1][3] is False and predictor.calls[1][2] is True
    # the correction click is positive, inside the missing top half
    coords, labels = predictor.calls[1][0], predictor.calls[1][1]
    assert labels[1] == 1 and coords[1][1] < 20 and predictor.calls[1][0].shape == (2, 2)


def test_seconds_follow_the_time_model():
    objects = [_disc(30, 30, 12)]
    annotator = SimulatedAnnotator(seconds_per_object=4.0, seconds_per_click=2.0, seconds_per_image=None)
    (mask,) = annotator.annotate(_request(objects, ShrinkingPredictor(objects, exact_after=2)))
    assert mask.seconds == pytest.approx(4.0 + 2 * 2.0)


def test_brushes_when_clicks_run_out():
    objects = [_disc(30, 30, 12)]
    annotator = SimulatedAnnotator(iou_target=0.95, max_clicks=1, brush_seconds=20.0, seconds_per_image=None)
    (mask,) = annotator.annotate(_request(objects, ShrinkingPredictor(objects, exact_after=5)))
    assert mask.brushed and mask.clicks == 1
    assert binary_iou(mask.mask, objects[0]) == 1.0
    assert mask.seconds == pytest.approx(5.0 + 3.0 + 20.0)


def test_skips_objects_a_prefilled_mask_covers_and_labels_largest_first():
    small, large = _disc(50, 50, 5), _disc(20, 20, 12)
    objects = [small, large]
    out = SimulatedAnnotator(seconds_per_image=None).annotate(
        _request(objects, ShrinkingPredictor(objects), prefilled=[large])
    )
    assert len(out) == 1 and binary_iou(out[0].mask, small) == 1.0
    order = SimulatedAnnotator(seconds_per_image=None).annotate(
        _request(objects, ShrinkingPredictor(objects))
    )
    assert binary_iou(order[0].mask, large) == 1.0


def test_time_budget_limits_masks_per_image():
    objects = [_disc(12, 12, 8), _disc(40, 12, 7), _disc(12, 40, 6), _disc(45, 45, 5)]
    annotator = SimulatedAnnotator(seconds_per_object=5, seconds_per_click=3, seconds_per_image=20.0)
    out = annotator.annotate(_request(objects, ShrinkingPredictor(objects, exact_after=2)))
    assert len(out) == 2  # 11 s each: the budget is spent after the second


def test_bad_settings_and_missing_ground_truth_are_refused():
    with pytest.raises(ValueError, match="iou_target"):
        SimulatedAnnotator(iou_target=1.5)
    with pytest.raises(ValueError, match="ground truth"):
        SimulatedAnnotator().annotate(_request(None, ShrinkingPredictor([])))


def test_settings_build_the_simulated_or_the_label_studio_annotator(monkeypatch):
    from tasks.annotate import AnnotatorSettings

    simulated = AnnotatorSettings(ground_truth="gt.json", iou_target=0.8).build()
    assert isinstance(simulated, SimulatedAnnotator) and simulated.iou_target == 0.8
    monkeypatch.setenv("SAM_ENGINE_LS_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("SAM_ENGINE_LS_TOKEN", "0" * 40)
    people = AnnotatorSettings(kind="labelstudio", labelstudio_project=3).build()
    assert people.project_id == 3 and people.name == "labelstudio"
    with pytest.raises(ValueError, match="labelstudio_project"):
        AnnotatorSettings(kind="labelstudio").build()
    with pytest.raises(ValueError, match="ground_truth"):
        AnnotatorSettings().build()


def _cells_with_parts():
    """Two cells, each with a nucleus off its centre, and a nucleolus in the first nucleus."""
    cell1, cell2 = _disc(20, 20, 14), _disc(46, 46, 12)
    nucleus1, nucleus2 = _disc(28, 20, 5) & cell1, _disc(52, 46, 4) & cell2
    nucleolus1 = _disc(29, 20, 2)
    return cell1, cell2, nucleus1, nucleus2, nucleolus1


def test_levels_order_takes_whole_part_and_subpart_in_turn():
    cell1, cell2, nucleus1, nucleus2, nucleolus1 = _cells_with_parts()
    masks = [nucleus2, cell2, nucleolus1, cell1, nucleus1]
    assert labelling_order(masks, "largest") == [3, 1, 4, 0, 2]
    assert labelling_order(masks, "levels") == [3, 4, 2, 1, 0]
    assert labelling_order([], "levels") == [] and labelling_order([cell1], "levels") == [0]
    with pytest.raises(ValueError, match="order"):
        labelling_order(masks, "smallest")


def test_levels_order_spends_the_budget_on_a_part_not_only_on_cells():
    cell1, cell2, nucleus1, _, _ = _cells_with_parts()
    objects = [cell1, cell2, nucleus1]
    # The predictor answers a click with the first object under it: the nucleus for a click inside it.
    predictor = ShrinkingPredictor([nucleus1, cell1, cell2], exact_after=1)
    budget = {"seconds_per_object": 5.0, "seconds_per_click": 3.0, "seconds_per_image": 16.0}
    largest = SimulatedAnnotator(**budget).annotate(_request(objects, predictor))
    levels = SimulatedAnnotator(**budget, order="levels").annotate(_request(objects, predictor))
    assert [binary_iou(m.mask, o) for m, o in zip(largest, (cell1, cell2), strict=True)] == [1.0, 1.0]
    assert [binary_iou(m.mask, o) for m, o in zip(levels, (cell1, nucleus1), strict=True)] == [1.0, 1.0]
    with pytest.raises(ValueError, match="order"):
        SimulatedAnnotator(order="random")
