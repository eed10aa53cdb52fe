import numpy as np
import pytest
import torch

from sam_core.losses import iou_head_loss, mask_loss, min_over_masks
from sam_core.train import (
    TrainConfig,
    Trainer,
    background_region,
    iteration_schedule,
    train,
)
from sam_core.train_data import SyntheticDataset, prepare_sample

from .conftest import StubSam, stub_interactive_loss


def test_schedule_is_first_prompt_8_points_and_2_maskonly_passes_one_of_them_last():
    config = TrainConfig()
    middles = set()
    for seed in range(20):
        s = iteration_schedule(config, np.random.default_rng(seed))
        assert len(s) == 11 and s[0] == "first" and s[-1] == "none"
        assert s.count("point") == 8 and s.count("none") == 2
        middles.add(s.index("none"))
    assert len(middles) > 3, "the intermediate mask-only pass should move around"
    assert iteration_schedule(
        TrainConfig(correction_points=0, no_point_iterations=0), np.random.default_rng(0)
    ) == ["first"]


def test_min_over_masks_backpropagates_only_the_lowest_loss_output():
    target = torch.zeros((2, 1, 4, 4))
    target[:, :, :2] = 1
    logits = torch.randn((2, 3, 4, 4)) * 0.1
    logits[0, 1] = target[0, 0] * 20 - 10  # output 1 fits mask 0
    logits[1, 2] = target[1, 0] * 20 - 10  # output 2 fits mask 1
    logits.requires_grad_(True)
    best, index = min_over_masks(mask_loss(logits, target.expand_as(logits)))
    assert index.tolist() == [1, 2]
    best.sum().backward()
    touched = logits.grad.abs().flatten(2).sum(-1) > 0
    assert touched.tolist() == [[False, True, False], [False, False, True]]
    with pytest.raises(ValueError):
        min_over_masks(torch.zeros(3))


class _RecordingSam(StubSam):
    """Records every pass's prompts; its outputs are constants it learns (``bias``)."""

    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(4))
        self.calls = []

    def prompted(self, points, boxes, masks):
        self.calls.append(
            {
                "coords": None if points is None else points[0].clone(),
                "points": None if points is None else points[1].clone(),
                "box": boxes is not None,
                "mask_input": masks is not None,
            }
        )

    def decode(self, n, multimask_output):
        self.calls[-1]["multimask"] = multimask_output
        m = 3 if multimask_output else 1
        low = self.bias[:m].view(1, m, 1, 1).expand(n, m, 8, 8)
        return low, torch.zeros((n, m)) + self.bias[3]


@pytest.mark.parametrize("use_box", [False, True])
def test_interactive_loss_runs_11_passes_with_mask_feedback_and_growing_clicks(use_box):
    model = _RecordingSam()
    gt = torch.zeros((2, 16, 16))
    gt[:, 4:12, 4:12] = 1
    boxes = torch.tensor([[4.0, 4.0, 11.0, 11.0]] * 2)
    loss, _ = stub_interactive_loss(model, gt, TrainConfig(), use_box, boxes)
    loss.backward()
    calls = model.calls
    assert len(calls) == 11
    assert calls[0]["multimask"] is (not use_box) and not any(c["multimask"] for c in calls[1:])
    assert not calls[0]["mask_input"] and all(c["mask_input"] for c in calls[1:])
    assert all(c["box"] is use_box for c in calls)
    n_points = [0 if c["points"] is None else c["points"].shape[1] for c in calls]
    assert n_points[0] == (0 if use_box else 1) and n_points[-1] == n_points[0] + 8
    assert model.bias.grad is not None and torch.isfinite(loss)


def test_background_is_the_pixels_a_margin_away_from_every_mask():
    instances = torch.zeros((2, 16, 16))
    instances[0, 2:5, 2:5] = 1
    instances[1, 10:12, 10:16] = 1
    background = background_region(instances, margin=2)
    assert background.dtype == torch.bool and background.shape == (16, 16)
    assert not background[0:7, 0:7].any() and not background[8:14, 8:16].any()
    assert background[0, 15] and background[15, 0] and background[7, 7] and background[15, 12]
    assert background_region(torch.ones((1, 8, 8))).sum() == 0


def test_a_prompt_on_background_has_an_iou_target_of_zero_even_for_an_empty_answer():
    target = torch.zeros((2, 1, 4, 4))
    target[0, 0, :2] = 1  # row 0 is an object, row 1 background
    logits = torch.full((2, 2, 4, 4), -5.0)
    logits[0, 0, :2] = 5.0  # the object found exactly
    logits[1, 1, 0, 0] = 5.0  # a stray pixel on background
    iou_pred = torch.ones((2, 2))
    loss = iou_head_loss(iou_pred, logits, target)
    # Row 0: output 0 matches (IoU 1, loss 0), output 1 is empty (IoU 0). Row 1: no output is right.
    assert loss.tolist() == [[0.0, 1.0], [1.0, 1.0]]


def test_background_prompts_click_first_where_their_region_says():
    model = _RecordingSam()
    gt = torch.zeros((2, 16, 16))
    gt[0, 4:8, 4:8] = 1  # row 1 stays empty: a background prompt
    region = torch.zeros((2, 16, 16), dtype=torch.bool)
    region[0] = gt[0] > 0
    region[1, 14, 2] = True  # the only background pixel it may click
    config = TrainConfig(correction_points=1, no_point_iterations=0)
    loss, _ = stub_interactive_loss(model, gt, config, first_region=region)
    assert torch.isfinite(loss)
    first = model.calls[0]["coords"]
    assert 4 <= first[0, 0, 0] < 8 and 4 <= first[0, 0, 1] < 8
    assert first[1, 0].tolist() == [2.0, 14.0]  # (x, y)


def test_training_with_background_prompts_runs_and_adds_them_to_each_point_image(small_config):
    small_config.background_points, small_config.box_probability = 3, 0.0
    trainer = train(small_config, dataset=[SyntheticDataset("train")[3]])
    assert len(trainer.history) == small_config.steps
    assert all(h["masks"] == small_config.masks_per_image + 3 for h in trainer.history)
    with pytest.raises(ValueError, match="background_points"):
        TrainConfig(background_points=-1).validate()


def test_loss_falls_over_a_handful_of_steps_on_one_scene(small_config):
    torch.manual_seed(0)
    small_config.steps, small_config.lr = 8, 1e-3
    small_config.correction_points = small_config.no_point_iterations = 0  # one pass per mask keeps it quick
    trainer = train(small_config, dataset=[SyntheticDataset("train")[3]])
    losses = [h["loss"] for h in trainer.history]
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:2]), losses


def test_empty_and_oversized_masks_are_skipped_and_counted(small_config):
    image, masks = SyntheticDataset("train")[0]
    bad = [np.zeros(image.shape[:2], bool), np.ones((300, 300), bool), masks[0]]
    sample = prepare_sample(image, bad, 256, 16, np.random.default_rng(0))
    assert sample.masks.shape[0] == 1 and sample.skipped == {"empty_masks": 1, "shape_mismatch": 1}
    small_config.steps = 1
    trainer = train(small_config, dataset=[(image, bad)])
    assert trainer.skipped["empty_masks"] >= 1 and trainer.skipped["shape_mismatch"] >= 1
    assert np.isfinite(trainer.history[-1]["loss"])


def test_a_dataset_without_any_usable_mask_is_a_clear_error(small_config):
    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="no usable mask"):
        Trainer(small_config, dataset=[(image, [np.zeros((64, 64), bool)])]).step()
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        prepare_sample(image.astype(np.float32), [], 256, 4, np.random.default_rng(0))


def test_non_finite_input_raises_instead_of_training_on_nan(small_config):
    trainer = Trainer(small_config, dataset=[SyntheticDataset("train")[0]])
    for p in trainer.model.mask_decoder.parameters():
        p.data.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite"):
        trainer.step()


def test_frozen_encoder_and_cached_embeddings_train_only_the_decoder(small_config):
    small_config.correction_points = small_config.no_point_iterations = 0
    small_config.cache_embeddings = True
    trainer = Trainer(small_config, dataset=[SyntheticDataset("train")[1]])
    encoder_before = [p.detach().clone() for p in trainer.model.image_encoder.parameters()]
    decoder_before = [p.detach().clone() for p in trainer.model.mask_decoder.parameters()]
    trainer.step()
    trainer.step()
    assert len(trainer.embedding_cache) == 1  # one image, encoded once
    after = list(trainer.model.image_encoder.parameters())
    assert all(torch.equal(a, b) for a, b in zip(encoder_before, after, strict=True))
    assert any(
        not torch.equal(a, b)
        for a, b in zip(decoder_before, trainer.model.mask_decoder.parameters(), strict=True)
    )


def test_frozen_embeddings_are_shared_across_runs_only_for_the_same_encoder(small_config):
    from sam_core.train import FROZEN_EMBEDDINGS, FrozenEmbeddings

    small_config.correction_points = small_config.no_point_iterations = 0
    small_config.cache_embeddings = True
    small_config.steps = 2
    dataset = [SyntheticDataset("train")[3]]
    FROZEN_EMBEDDINGS.clear()
    first = train(small_config, dataset)
    hits, misses = FROZEN_EMBEDDINGS.hits, FROZEN_EMBEDDINGS.misses
    # A second run on the first's weights: same frozen encoder, same image -> the embedding is reused, and the
    # run is exactly what it would be without the shared cache.
    second = Trainer(small_config, dataset, model=first.model)
    second.step()
    assert FROZEN_EMBEDDINGS.hits == hits + 1 and FROZEN_EMBEDDINGS.misses == misses
    reference = second.embedding_cache[0]
    with torch.no_grad():
        from sam_core.train import encode

        image = prepare_sample(*dataset[0], first.img_size, 2, np.random.default_rng(0)).image
        assert torch.allclose(encode(first.model, image[None]), reference)
    # Another encoder (one weight changed) never sees that embedding.
    with torch.no_grad():
        next(first.model.image_encoder.parameters()).add_(0.01)
    third = Trainer(small_config, dataset, model=first.model)
    third.step()
    assert FROZEN_EMBEDDINGS.misses == misses + 1
    assert not torch.equal(third.embedding_cache[0], reference)

    small = FrozenEmbeddings(max_bytes=1)  # evicts down to the newest entry
    for value in range(3):
        small.get("k", torch.full((3, 4, 4), float(value)), lambda v=value: torch.full((2,), float(v)))
    assert len(small._entries) == 1


def test_training_reports_each_step_of_this_run(small_config):
    small_config.steps = 3
    small_config.correction_points = small_config.no_point_iterations = 0
    dataset = [SyntheticDataset("train")[3]]
    calls = []
    train(small_config, dataset, on_progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    calls.clear()
    train(small_config, dataset, stop_after=2, on_progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 2), (2, 2)]


@pytest.mark.parametrize("freeze_norm_stats", [True, False])
def test_freeze_norm_stats_keeps_batchnorm_statistics_while_the_encoder_learns(
    small_config, freeze_norm_stats
):
    small_config.model = "tiny_conv"  # the conv encoder has BatchNorm; the ViT has none
    small_config.correction_points = small_config.no_point_iterations = 0
    small_config.freeze_norm_stats = freeze_norm_stats
    trainer = Trainer(small_config, dataset=[SyntheticDataset("train")[1]])
    norms = [m for m in trainer.model.image_encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms
    stats_before = [m.running_mean.clone() for m in norms]
    weights_before = [m.weight.detach().clone() for m in norms]
    trainer.step()
    trainer.step()
    stats_kept = all(torch.equal(m.running_mean, b) for m, b in zip(norms, stats_before, strict=True))
    assert stats_kept == freeze_norm_stats
    # Either way the encoder trains: its BatchNorm affine weights move.
    assert any(not torch.equal(m.weight, b) for m, b in zip(norms, weights_before, strict=True))


def test_closing_the_trainer_gives_up_on_data_workers_that_do_not_answer_in_time(small_config, monkeypatch):
    """close() waits for the reads in flight (killing a worker mid-answer can hang the pool), but not past
    READ_TIMEOUT: here 0 s, while the spawned worker is still starting, so it is terminated."""
    import time

    import sam_core.train as train_module

    monkeypatch.setattr(train_module, "READ_TIMEOUT", 0.0)
    trainer = Trainer(small_config, SyntheticDataset("train", count=2), data_workers=1)
    pending = trainer._pool.apply_async(train_module._read_item, (0,))
    trainer._ahead.append((0, pending))
    started = time.monotonic()
    trainer.close()
    assert trainer._pool is None and not trainer._ahead
    assert not pending.ready()  # never answered: its worker was stopped before it could
    assert time.monotonic() - started < 20


def test_data_workers_read_the_drawn_scenes_in_order_and_a_run_with_them_repeats(small_config):
    small_config.correction_points = small_config.no_point_iterations = 0
    dataset = SyntheticDataset("train", count=5)
    losses = []
    for _ in range(2):
        torch.manual_seed(0)  # the model's initialisation
        trainer = Trainer(small_config, dataset, data_workers=1)
        try:
            losses.append([trainer.step()["loss"] for _ in range(2)])
            for _ in range(3):  # each read is the scene at the index drawn for it, though read ahead
                index, image, masks = trainer._read()
                expected_image, expected_masks = dataset[index]
                np.testing.assert_array_equal(image, expected_image)
                assert len(masks) == len(expected_masks)
        finally:
            trainer.close()
        assert trainer._pool is None
    assert losses[0] == losses[1]
    with pytest.raises(ValueError, match="data_workers must be >= 0"):
        Trainer(small_config, dataset, data_workers=-1)
