"""Calibrated thresholds: the operating point search, the candidates' IoU, and how filters use the result."""

import math

import numpy as np
import pandas as pd
import pytest

from tasks.calibrate import best_matches
from tasks.filter import FilterSettings, filter_records
from tasks.thresholds import (
    STABILITY_GRID,
    filter_operating_point,
    fit_quality,
    operating_point,
    thresholds_at,
    wilson_lower,
)


def _brute_force(table: pd.DataFrame, target: float, match_iou: float, min_kept: int):
    """Every (predicted-IoU threshold, stability threshold) pair, checked one by one; a right mask is one that
    matches an object no other kept mask matches better-rated."""
    best = None
    predicted, stability = table.predicted_iou.to_numpy(), table.stability_score.to_numpy()
    good = table.best_iou.to_numpy() >= match_iou
    objects = list(zip(table.image_id, table.best_gt, strict=True))
    for s in STABILITY_GRID:
        for t in sorted(set(predicted)):
            kept = (predicted >= t) & (stability >= s)
            n = int(kept.sum())
            m = len({objects[i] for i in np.flatnonzero(kept & good)})  # distinct objects found
            if n >= min_kept and wilson_lower(m, n) >= target:
                key = (m, m / n)
                if best is None or key > best[0]:
                    best = (key, t, s)
    return best


def _table(rng, n=120):
    predicted = rng.uniform(0.2, 0.5, n).round(3)  # rounded: ties must be handled as one threshold
    stability = rng.uniform(0.4, 1.0, n)
    # Right masks are likelier at high predicted IoU and stability, as in a (poorly) calibrated model.
    chance = np.clip((predicted - 0.2) * 2.0 + (stability - 0.4), 0, 1)
    best_iou = np.where(rng.random(n) < chance, rng.uniform(0.75, 1.0, n), rng.uniform(0.0, 0.74, n))
    x0 = rng.uniform(0, 50, n).astype(np.float32)
    return pd.DataFrame(
        {
            "image_id": "x",
            "predicted_iou": predicted.astype(np.float32),
            "stability_score": stability.astype(np.float32),
            "area": 100,
            "image_area": 64 * 64,
            "x0": x0,
            "y0": x0,
            "x1": x0 + 10,
            "y1": x0 + 10,
            "best_iou": best_iou.astype(np.float32),
            "best_gt": rng.integers(0, 60, n),  # some right masks find the same object
        }
    )


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("target", [0.6, 0.8, 0.95])
def test_operating_point_matches_an_exhaustive_search(seed, target):
    table = _table(np.random.default_rng(seed))
    point = operating_point(table, target, match_iou=0.75, min_kept=5)
    expected = _brute_force(table, target, 0.75, 5)
    if expected is None:
        assert not point["feasible"] and math.isinf(point["pred_iou_thresh"])
        return
    (matched, precision), t, s = expected
    assert point["feasible"]
    assert point["matched"] == matched and point["precision"] == pytest.approx(precision)
    kept = (table.predicted_iou >= point["pred_iou_thresh"]) & (
        table.stability_score >= point["stability_score_thresh"]
    )
    assert int(kept.sum()) == point["kept"] and point["precision_lower"] >= target


def test_a_hand_made_case_and_an_unreachable_target():
    table = pd.DataFrame(
        {
            "image_id": "x",
            "predicted_iou": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3],
            "stability_score": [0.99] * 7,
            "best_iou": [0.9, 0.9, 0.2, 0.9, 0.1, 0.1, 0.9],
            "best_gt": [0, 1, 2, 3, 4, 5, 0],  # the last one finds object 0 again: a duplicate, so wrong
        }
    )
    # The precision must hold at its 95% Wilson lower bound: 2 of 2 right (down to 0.8) bounds at 0.43, 3 of 4
    # (down to 0.6) at 0.36, and nothing reaches 0.5 on so little evidence.
    assert wilson_lower(2, 2) == pytest.approx(0.425, abs=1e-3)
    assert wilson_lower(3, 4) == pytest.approx(0.356, abs=1e-3)
    assert wilson_lower(50, 100) == pytest.approx(0.4188, abs=1e-3)
    assert wilson_lower(50, 100) < wilson_lower(500, 1000) < 0.5  # more evidence, a tighter bound
    assert operating_point(table, 0.4, 0.75, min_kept=1)["pred_iou_thresh"] == pytest.approx(0.8)
    point = operating_point(table, 0.3, 0.75, min_kept=1)
    assert point["pred_iou_thresh"] == pytest.approx(0.6) and point["precision"] == pytest.approx(0.75)
    assert not operating_point(table, 0.5, 0.75, min_kept=1)["feasible"]
    assert not operating_point(table, 0.3, 0.75, min_kept=5)["feasible"]
    assert operating_point(table, 0.18, 0.75, min_kept=7)["matched"] == 3  # the duplicate does not count
    with pytest.raises(ValueError, match="target_precision"):
        operating_point(table, 0.0, 0.75)


def test_a_lower_precision_confidence_asks_less_evidence_and_a_filter_passes_its_own():
    from tasks.autogen import AutogenSettings

    table = pd.DataFrame(
        {
            "image_id": "x",
            "predicted_iou": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3],
            "stability_score": [0.99] * 7,
            "area": 100,
            "image_area": 10_000,
            "x0": [20.0 * i for i in range(7)],
            "y0": 0.0,
            "x1": [20.0 * i + 10 for i in range(7)],
            "y1": 10.0,
            "best_iou": [0.9, 0.9, 0.2, 0.9, 0.1, 0.1, 0.9],
            "best_gt": [0, 1, 2, 3, 4, 5, 0],
        }
    )
    # 3 of the first 4 right: 0.75 observed, 0.36 at the 95% bound, 0.50 at 84% (z = 1).
    assert not operating_point(table, 0.75, 0.75, min_kept=1)["feasible"]
    observed = operating_point(table, 0.75, 0.75, min_kept=1, confidence=0.5)
    assert observed["pred_iou_thresh"] == pytest.approx(0.6) and observed["matched"] == 3
    assert observed["precision_lower"] == pytest.approx(0.75)
    assert operating_point(table, 0.45, 0.75, min_kept=1, confidence=0.8413)["matched"] == 3
    assert not operating_point(table, 0.45, 0.75, min_kept=1)["feasible"]  # 2 of 2 bound at 0.43 at 95%
    for wrong in (1.0, 0.4):
        with pytest.raises(ValueError, match="confidence must be in"):
            operating_point(table, 0.75, 0.75, confidence=wrong)
    settings = FilterSettings(target_precision=0.75, match_iou=0.75, min_kept=1, calibrate_quality=False)
    autogen = AutogenSettings(box_nms_thresh=1.0)
    assert not filter_operating_point(table, autogen, settings)["feasible"]
    lenient = settings.model_copy(update={"precision_confidence": 0.5})
    assert filter_operating_point(table, autogen, lenient)["matched"] == 3
    with pytest.raises(ValueError, match="precision_confidence"):
        FilterSettings(precision_confidence=1.0)


def test_nms_counts_a_duplicated_mask_once_and_area_limits_apply():
    # One right mask found from 5 grid points (near-identical boxes), and 5 wrong masks elsewhere.
    rows = [(0.9 - 0.01 * i, 10, 10, 0.9) for i in range(5)] + [(0.5, 40 + 5 * i, 40, 0.1) for i in range(5)]
    table = pd.DataFrame(
        {
            "image_id": "x",
            "predicted_iou": [r[0] for r in rows],
            "stability_score": 0.99,
            "area": [100] * 5 + [4] * 5,
            "image_area": 10_000,
            "x0": [r[1] for r in rows],
            "y0": [r[2] for r in rows],
            "x1": [r[1] + 10 for r in rows],
            "y1": [r[2] + 10 for r in rows],
            "best_iou": [r[3] for r in rows],
            "best_gt": list(range(10)),  # pretend each found its own object: this test is about NMS
        }
    )
    # Without NMS the duplicates look like 5 right masks in a row; a stage keeps 1 of them, then 5 wrong ones.
    assert operating_point(table, 0.5, 0.75, min_kept=5)["kept"] == 5
    assert not operating_point(table, 0.5, 0.75, min_kept=2, nms_iou=0.7)["feasible"]
    point = operating_point(table, 0.25, 0.75, min_kept=1, nms_iou=0.7)
    assert point["kept"] == point["matched"] == 1
    # The small wrong masks fall under min_area: what is left is the one right mask.
    point = operating_point(table, 0.25, 0.75, min_kept=1, nms_iou=0.7, min_area=16)
    assert point["kept"] == 1 and point["pred_iou_thresh"] == pytest.approx(0.9)


def test_best_matches_takes_the_best_ground_truth_mask():
    a = np.zeros((4, 4), bool)
    a[:2] = True
    b = np.zeros((4, 4), bool)
    b[:, :2] = True
    half_a = np.zeros((4, 4), bool)
    half_a[0] = True
    out, index = best_matches([a, half_a, ~a & ~b, b], [a, b])
    assert out[0] == pytest.approx(1.0) and out[1] == pytest.approx(0.5) and out[2] == pytest.approx(0.0)
    assert index.tolist() == [0, 0, -1, 1]
    assert best_matches([a], [])[0].tolist() == [0.0] and len(best_matches([], [a])[0]) == 0


def test_calibrated_settings_apply_the_point_and_an_unreachable_one_keeps_nothing(tmp_path):
    from stores import Store
    from tasks.autogen import AutogenSettings
    from tasks.calibrate import calibrated_settings, read_calibration

    store = Store(tmp_path.as_uri())
    with pytest.raises(FileNotFoundError, match="'v1' has no calibration"):
        read_calibration(store, "v1")
    table = _table(np.random.default_rng(0))
    store.write_calibration("v1", table)
    assert read_calibration(store, "v1").equals(table)

    fixed = FilterSettings()
    assert calibrated_settings(store, "v1", AutogenSettings(), fixed)[1] == fixed  # no target: unchanged
    autogen, filter, point = calibrated_settings(
        store, "v1", AutogenSettings(), FilterSettings(target_precision=0.6, calibrate_quality=False)
    )
    assert point["quality_model"] is None and filter.quality is None
    assert (
        point["feasible"] and autogen.pred_iou_thresh == filter.min_predicted_iou == point["pred_iou_thresh"]
    )
    assert autogen.stability_score_thresh == filter.min_stability_score == point["stability_score_thresh"]

    autogen, filter, point = calibrated_settings(
        store, "v1", AutogenSettings(), FilterSettings(target_precision=1.0, match_iou=1.0)
    )
    assert not point["feasible"] and autogen.pred_iou_thresh == 1.0
    record = {"predicted_iou": 1.5, "stability_score": 1.0, "area": 50, "bbox": [0, 0, 5, 10]}
    assert filter_records([record], (64, 64), filter) == []  # even an over-confident mask is dropped


def test_the_stage_filter_says_why_it_kept_nothing():
    from tasks.filter import FilterSettings, filter_records, why_none_kept

    records = [
        {"predicted_iou": 0.7, "stability_score": 0.99, "area": 400, "bbox": [0, 0, 20, 20]},
        {"predicted_iou": 0.9, "stability_score": 0.80, "area": 400, "bbox": [5, 5, 20, 20]},
    ]
    strict = FilterSettings(min_predicted_iou=0.95)
    assert filter_records(records, (64, 64), strict) == []
    assert "highest predicted IoU was 0.900, below its threshold 0.950" in why_none_kept(
        records, (64, 64), strict
    )
    unstable = FilterSettings(min_predicted_iou=0.85, min_stability_score=0.9)
    assert (
        "1 reached the predicted IoU threshold 0.850, and their highest stability score was 0.800"
        in why_none_kept(records, (64, 64), unstable)
    )
    tiny_area = FilterSettings(min_predicted_iou=0.5, min_stability_score=0.5, min_area=1000)
    assert filter_records(records, (64, 64), tiny_area) == []
    assert "outside the area limits (1000 px" in why_none_kept(records, (64, 64), tiny_area)
    assert why_none_kept([], (64, 64), strict) == "the generator kept no mask"


def test_the_threshold_policy_needs_neither_prefect_nor_the_store():
    """tasks.thresholds, and every project module it builds on, imports no Prefect and no store: the policy
    can be read, tested and reused without either."""
    import ast
    import importlib.util
    from pathlib import Path

    seen, todo, outside = set(), ["tasks.thresholds"], set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        tree = ast.parse(Path(importlib.util.find_spec(module).origin).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                if name.split(".")[0] in ("tasks", "sam_core") and importlib.util.find_spec(name):
                    todo.append(name)
                outside.add(name.split(".")[0])
    assert "tasks.filter" in seen and "sam_core.mask_utils" in seen
    assert not outside & {"prefect", "stores"}, sorted(seen)


def test_calibration_candidates_are_cleaned_as_the_stage_generator_cleans_them():
    """With min_mask_region_area the candidates a calibration scores are the masks the stage's generator makes
    (at no thresholds and no NMS), islands dropped and holes filled; without it they keep their stray pixels."""
    from sam_core.automatic_mask_generator import AutomaticMaskGenerator
    from sam_core.domains import domain_scene
    from sam_core.embedded import load_embedded
    from tasks.calibrate import CalibrationSettings, candidate_table

    model = load_embedded()
    image, masks = domain_scene("shapes", 7)  # nearly all its masks have a stray pixel or a pinhole
    settings = CalibrationSettings(ground_truth="unused.json", points_per_side=4, min_mask_region_area=25)
    cleaned = candidate_table(model, [("a", image, masks)], settings)
    raw = candidate_table(
        model, [("a", image, masks)], settings.model_copy(update={"min_mask_region_area": 0})
    )
    generator = AutomaticMaskGenerator(
        model,
        points_per_side=4,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        box_nms_thresh=1.0,
        min_mask_region_area=25,
        output_mode="binary_mask",
    )
    stage = generator.generate(image)
    assert sorted(cleaned.area) == sorted(r["area"] for r in stage)
    assert len(cleaned) == len(raw) and sorted(cleaned.area) != sorted(raw.area)


def _sized_table(rng, n=600):
    """Candidates whose predicted IoU says little and whose size says much: masks of a middle size (a cell) are
    mostly right, small and large ones (a speck, two cells merged) mostly wrong, at the same predicted IoU."""
    area = np.exp(rng.uniform(np.log(20), np.log(4000), n)).round()
    middle = (area > 200) & (area < 900)
    predicted = rng.uniform(0.4, 0.8, n).round(3)
    chance = np.where(middle, 0.95, 0.15) * (0.8 + 0.5 * (predicted - 0.4))
    best_iou = np.where(rng.random(n) < chance, rng.uniform(0.55, 1.0, n), rng.uniform(0.0, 0.45, n))
    x0 = rng.uniform(0, 200, n).astype(np.float32)
    return pd.DataFrame(
        {
            "image_id": rng.integers(0, 8, n).astype(str),
            "predicted_iou": predicted.astype(np.float32),
            "stability_score": rng.uniform(0.8, 1.0, n).astype(np.float32),
            "area": area.astype(np.int64),
            "image_area": 256 * 256,
            "x0": x0,
            "y0": x0,
            "x1": x0 + np.sqrt(area).astype(np.float32),
            "y1": x0 + np.sqrt(area).astype(np.float32),
            "best_iou": best_iou.astype(np.float32),
            "best_gt": np.arange(n),
        }
    )


def test_a_quality_model_learns_what_predicted_iou_misses_and_keeps_more_right_masks():
    from tasks.autogen import AutogenSettings

    table = _sized_table(np.random.default_rng(0))
    model = fit_quality(table, match_iou=0.5)
    assert model == fit_quality(table, match_iou=0.5)  # deterministic: a stage and its evaluation agree
    rating = model.rate(table.predicted_iou, table.stability_score, table.area, table.image_area)
    assert rating.shape == (len(table),) and ((rating > 0) & (rating < 1)).all()
    middle = (table.area > 200) & (table.area < 900)
    assert rating[middle].mean() > rating[~middle].mean() + 0.05
    # Same predicted IoU and stability: a middle-sized mask rates above a large one.
    cell, merged = model.rate([0.6, 0.6], [0.9, 0.9], [400, 3500], 256 * 256)
    assert cell > merged

    autogen = AutogenSettings(box_nms_thresh=1.0)
    by_iou = filter_operating_point(
        table, autogen, FilterSettings(target_precision=0.8, match_iou=0.5, calibrate_quality=False)
    )
    by_quality = filter_operating_point(table, autogen, FilterSettings(target_precision=0.8, match_iou=0.5))
    assert by_quality["feasible"] and by_quality["quality_model"] == model.model_dump()
    assert by_quality["pred_iou_thresh"] is None and by_quality["quality_thresh"] > 0
    assert by_quality["precision_lower"] >= 0.8
    assert by_quality["matched"] > 2 * max(by_iou["matched"], 1), (by_quality, by_iou)


def test_too_few_right_or_wrong_candidates_fit_no_quality_model_and_rank_by_predicted_iou():
    from tasks.autogen import AutogenSettings

    table = _table(np.random.default_rng(1), n=40)
    assert fit_quality(table.assign(best_iou=0.9), 0.5) is None  # nothing wrong
    assert fit_quality(table.head(15), 0.75) is None  # under 10 right or wrong
    point = filter_operating_point(table.head(15), AutogenSettings(), FilterSettings(target_precision=0.3))
    assert point["quality_model"] is None and point["quality_thresh"] is None


def test_a_filter_with_a_quality_model_keeps_and_ranks_by_quality():
    from tasks.autogen import AutogenSettings
    from tasks.filter import why_none_kept

    table = _sized_table(np.random.default_rng(2))
    point = filter_operating_point(
        table, AutogenSettings(), FilterSettings(target_precision=0.8, match_iou=0.5)
    )
    autogen, filter = thresholds_at(
        point, AutogenSettings(), FilterSettings(target_precision=0.8, match_iou=0.5)
    )
    # The generator keeps every predicted IoU and leaves NMS to the filter, which ranks as the calibration did.
    assert autogen.pred_iou_thresh == 0.0 and autogen.box_nms_thresh == 1.0
    # ... at the stricter NMS of the two, as the point was measured: a filter at 0.7 under a generator at 0.3
    # (stage 2's pre-fill) takes 0.3, or it keeps a cell's variants the calibration counted out.
    strict = AutogenSettings(box_nms_thresh=0.3)
    lenient = FilterSettings(target_precision=0.8, match_iou=0.5, nms_iou=0.7)
    point_at = filter_operating_point(table, strict, lenient)
    assert thresholds_at(point_at, strict, lenient)[1].nms_iou == 0.3
    assert thresholds_at(point_at, AutogenSettings(box_nms_thresh=0.9), lenient)[1].nms_iou == 0.7
    assert autogen.stability_score_thresh == filter.min_stability_score == point["stability_score_thresh"]
    assert filter.min_quality == point["quality_thresh"] and filter.quality is not None
    records = [
        {"predicted_iou": 0.95, "stability_score": 0.99, "area": 3600, "bbox": [0, 0, 60, 60]},  # merged
        {"predicted_iou": 0.55, "stability_score": 0.99, "area": 400, "bbox": [100, 100, 20, 20]},  # a cell
        {
            "predicted_iou": 0.60,
            "stability_score": 0.99,
            "area": 420,
            "bbox": [101, 101, 20, 21],
        },  # its variant
    ]
    kept = filter_records(records, (256, 256), filter)
    # The merged mask, rated highest by its IoU head, is not kept; of the cell's two masks NMS keeps the better
    # quality, and the record says it.
    assert [r["area"] for r in kept] == [420]
    assert kept[0]["quality"] >= filter.min_quality
    assert filter_records(records[:1], (256, 256), filter) == []
    assert "highest quality was" in why_none_kept(records[:1], (256, 256), filter)
    # Unreachable: nothing is kept.
    point = filter_operating_point(
        table, AutogenSettings(), FilterSettings(target_precision=1.0, match_iou=1.0)
    )
    _, nothing = thresholds_at(point, AutogenSettings(), FilterSettings(target_precision=1.0, match_iou=1.0))
    from tasks.filter import keeps_nothing

    assert not point["feasible"] and keeps_nothing(nothing)
