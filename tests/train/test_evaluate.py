import numpy as np
import pytest
import torch

from sam_core.evaluate import (
    area_breakdown,
    automatic_precision_recall,
    click_ious,
    evaluate_interactive,
    format_table,
    noc,
)
from sam_core.train import build_model


def _square(y0, x0, side, size=32):
    m = np.zeros((size, size), bool)
    m[y0 : y0 + side, x0 : x0 + side] = True
    return m


def test_noc_counts_clicks_to_threshold_and_caps_at_the_budget():
    assert noc([0.5, 0.86, 0.95], 0.85) == 2
    assert noc([0.5, 0.86, 0.89], 0.90) == 3
    assert noc([0.95], 0.90) == 1


def test_automatic_precision_recall_matches_one_to_one_at_each_threshold():
    gt = [_square(0, 0, 10), _square(20, 20, 10)]
    predicted = [
        _square(0, 0, 10),  # exact
        _square(20, 20, 8),  # IoU 0.64
        _square(0, 0, 9),  # duplicate of the first ground truth: cannot match twice
    ]
    out = automatic_precision_recall(predicted, gt)
    assert out["precision@0.5"] == pytest.approx(2 / 3) and out["recall@0.5"] == 1.0
    assert out["precision@0.75"] == pytest.approx(1 / 3) and out["recall@0.75"] == 0.5
    assert automatic_precision_recall([], gt)["recall@0.5"] == 0.0
    with pytest.raises(ValueError, match="one shape"):
        automatic_precision_recall([np.zeros((4, 4), bool)], gt)


def test_click_ious_shapes_and_oracle_never_below_confident():
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    gts = np.zeros((2, 256, 256), bool)
    gts[0, 50:120, 60:140] = True
    gts[1, 150:200, 30:90] = True
    with torch.no_grad():
        embedding = model.image_encoder(torch.zeros((1, 3, 256, 256)))
    out = click_ious(model, embedding, gts, max_clicks=3)
    assert out["confident"].shape == (2, 3) and out["oracle"].shape == (2, 3)
    assert (out["oracle"][:, 0] >= out["confident"][:, 0]).all()
    assert ((out["confident"] >= 0) & (out["confident"] <= 1)).all()


def test_evaluate_interactive_reports_every_click_count_and_counts_skips():
    torch.manual_seed(0)
    model = build_model("tiny")
    image = np.zeros((64, 64, 3), np.uint8)
    good = np.zeros((64, 64), bool)
    good[10:40, 10:40] = True
    dataset = [(image, [good, np.zeros((64, 64), bool), np.ones((80, 80), bool)])]
    metrics = evaluate_interactive(model, dataset, max_clicks=9)
    assert metrics["masks"] == 1 and metrics["skipped"] == {"empty_masks": 1, "shape_mismatch": 1}
    for k in (1, 2, 3, 5, 9):
        assert 0.0 <= metrics[f"miou@{k}_oracle"] <= 1.0
    assert "noc@90_confident" in metrics and "miou@1" in format_table(metrics)
    with pytest.raises(ValueError, match="no usable mask"):
        evaluate_interactive(model, [(image, [np.zeros((64, 64), bool)])], max_clicks=2)


def test_area_breakdown_bins_masks_by_area_and_averages_each_bin():
    areas = np.array([50, 60, 150, 5000])
    confident = np.array([[0.1, 0.2, 0.3], [0.3, 0.4, 0.5], [0.6, 0.7, 0.8], [0.2, 0.9, 0.95]])
    oracle = confident + 0.05
    rows = area_breakdown(areas, confident, oracle)
    assert [(r["min_area"], r["max_area"], r["masks"]) for r in rows] == [
        (30, 100, 2),
        (100, 300, 1),
        (3000, None, 1),
    ]
    assert rows[0]["miou@1_confident"] == pytest.approx(0.2) and rows[0]["miou@1_oracle"] == pytest.approx(
        0.25
    )
    assert rows[0]["miou@3_confident"] == pytest.approx(0.4) and "miou@5_confident" not in rows[0]
    assert rows[2]["miou@2_confident"] == pytest.approx(0.9)


def test_evaluate_interactive_by_area_counts_every_scored_mask():
    torch.manual_seed(0)
    model = build_model("tiny")
    image = np.zeros((64, 64, 3), np.uint8)
    small, large = np.zeros((64, 64), bool), np.zeros((64, 64), bool)
    small[5:12, 5:12], large[20:60, 20:60] = True, True
    metrics = evaluate_interactive(model, [(image, [small, large])], max_clicks=2, by_area=True)
    assert sum(r["masks"] for r in metrics["by_area"]) == metrics["masks"] == 2
    assert "by_area" not in evaluate_interactive(model, [(image, [small, large])], max_clicks=2)


def test_evaluate_interactive_scores_the_same_subset_of_masks_every_time():
    torch.manual_seed(0)
    model = build_model("tiny")
    image = np.zeros((64, 64, 3), np.uint8)
    squares = [_square(y, x, 8, size=64) for y in (4, 24, 44) for x in (4, 24, 44)]
    dataset = [(image, squares), (image, squares[:2])]
    capped = evaluate_interactive(model, dataset, max_clicks=2, max_masks_per_image=3)
    assert capped["masks"] == 3 + 2  # the second image has fewer masks than the cap: all of them
    again = evaluate_interactive(model, dataset, max_clicks=2, max_masks_per_image=3)
    assert again["miou@2_oracle"] == capped["miou@2_oracle"]
    assert evaluate_interactive(model, dataset, max_clicks=2)["masks"] == 9 + 2
