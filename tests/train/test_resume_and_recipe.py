"""What the embedded model's recipe relies on: a run that stops and goes on is the run that never stopped, the
mask fed back is the one shown, tokens are not decayed, the lr holds before it decays, and checkpoints hold the
moving average."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from sam_core.recipes import EMBEDDED_RECIPE
from sam_core.train import TrainConfig, Trainer, lr_at, make_optimizer
from sam_core.train_data import SyntheticDataset

from .conftest import StubSam, stub_interactive_loss

# The embedded model's recipe at a size that trains in a moment (what these tests prove does not hang on size), its
# moving average fast enough to move in a few steps.
SMALL = {"steps": 8, "images_per_step": 2, "masks_per_image": 2, "correction_points": 1, "warmup_steps": 1}


def _conv_config(**overrides) -> TrainConfig:
    return dataclasses.replace(EMBEDDED_RECIPE, **{**SMALL, "ema_decay": 0.9, "log_every": 0, **overrides})


def test_a_run_stopped_and_resumed_from_its_state_equals_the_run_that_never_stopped():
    data = [SyntheticDataset("train")[i] for i in range(4)]
    torch.manual_seed(0)
    straight = Trainer(_conv_config(), data)
    for _ in range(4):
        straight.step()

    torch.manual_seed(0)
    first = Trainer(_conv_config(), data)
    for _ in range(2):
        first.step()
    state = first.state()
    torch.manual_seed(123)  # whatever happened in between, the state brings the generators back
    resumed = Trainer(_conv_config(), data)
    resumed.restore(state)
    for _ in range(2):
        resumed.step()

    assert resumed.step_index == straight.step_index == 4
    for name, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
    for name, value in straight.weights().items():
        assert torch.equal(resumed.weights()[name], value), name


def test_checkpoints_hold_the_moving_average_of_the_weights():
    data = [SyntheticDataset("train")[0]]
    trainer = Trainer(_conv_config(), data)
    for _ in range(3):
        trainer.step()
    saved = trainer.checkpoint()["model"]
    key = "mask_decoder.iou_token.weight"
    assert torch.equal(saved[key], trainer.ema[key])
    assert not torch.equal(saved[key], trainer.model.state_dict()[key])
    assert trainer.checkpoint()["sam_config"]["image_encoder"] == "conv"
    plain = Trainer(_conv_config(ema_decay=0.0), data)
    plain.step()
    assert torch.equal(plain.checkpoint()["model"][key], plain.model.state_dict()[key])


class _ShownMaskSam(StubSam):
    """Three outputs of constant logits 5, -5, 3 with predicted IoU 0.1, 0.2, 0.9: against a full target the
    lowest loss is output 0, the most confident output 2. Records the mask prompt of every pass."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.mask_inputs = []

    def prompted(self, points, boxes, masks):
        self.mask_inputs.append(None if masks is None else masks.clone())

    def decode(self, n, multimask_output):
        values = torch.tensor([5.0, -5.0, 3.0]) if multimask_output else torch.tensor([3.0])
        ious = torch.tensor([0.1, 0.2, 0.9]) if multimask_output else torch.tensor([0.9])
        low = (self.scale * values).view(1, -1, 1, 1).expand(n, -1, 8, 8)
        return low, ious.expand(n, -1)


def test_the_next_pass_gets_the_mask_the_iou_head_ranks_first_not_the_lowest_loss_one():
    model = _ShownMaskSam()
    gt = torch.ones((2, 16, 16))
    config = TrainConfig(correction_points=1, no_point_iterations=0, pixel_loss="bce", focal_weight=1.0)
    loss, _ = stub_interactive_loss(model, gt, config)
    loss.backward()
    assert model.mask_inputs[0] is None
    assert torch.all(model.mask_inputs[1] == 3.0), "output 2 (predicted IoU 0.9) is what the user was shown"


def test_learned_tokens_norms_and_biases_are_not_weight_decayed():
    from sam_core.train import build_model

    model = build_model("tiny_conv")
    optimizer = make_optimizer(model, TrainConfig(weight_decay=0.1))
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    for token in (
        "mask_decoder.iou_token.weight",
        "mask_decoder.mask_tokens.weight",
        "prompt_encoder.no_mask_embed.weight",
    ):
        assert id(dict(model.named_parameters())[token]) not in decayed, token
    assert any(names[i].endswith("transformer.layers.0.mlp.lin1.weight") for i in decayed)
    assert not any(names[i].endswith(".bias") for i in decayed)


def test_lr_holds_its_peak_until_the_decay_fraction_then_anneals():
    config = TrainConfig(steps=100, lr=1e-3, warmup_steps=10, decay_fraction=0.25, min_lr_ratio=0.1)
    assert lr_at(0, config) < lr_at(9, config) == 1e-3
    assert lr_at(30, config) == lr_at(77, config) == 1e-3
    assert lr_at(90, config) < 1e-3 and abs(lr_at(100, config) - 1e-4) < 1e-9


def test_a_fresh_optimizer_on_trained_weights_warms_up_again_within_the_schedule():
    config = TrainConfig(steps=100, lr=1e-3, warmup_steps=10, decay_fraction=0.25, min_lr_ratio=0.1)
    # Started at step 50 (stable phase): a warmup to the peak, then the schedule as from step 0.
    assert lr_at(50, config, optimizer_start=50) == 1e-4
    assert lr_at(50, config, optimizer_start=50) < lr_at(55, config, optimizer_start=50) < 1e-3
    assert lr_at(59, config, optimizer_start=50) == lr_at(70, config, optimizer_start=50) == 1e-3
    # Started inside the decay: the warmup scales the decaying lr, it never climbs back to the peak.
    assert lr_at(85, config, optimizer_start=85) == lr_at(85, config) / 10
    assert lr_at(94, config, optimizer_start=85) == lr_at(94, config) < 1e-3
    # The start step travels with the run's state.
    data = [SyntheticDataset("train")[0]]
    trainer = Trainer(_conv_config(), data)
    trainer.optimizer_start = 2
    other = Trainer(_conv_config(), data)
    other.restore(trainer.state())
    assert other.optimizer_start == 2


def test_grouping_loss_is_zero_for_features_that_group_instances_and_trains_the_encoder():
    from sam_core.train import grouping_loss

    # Two side-by-side objects on background, one with a part in it, on a 4x4 cell grid of a 32x32 image.
    instances = torch.zeros((3, 32, 32))
    instances[0, :, :16] = 1  # object A: left half
    instances[1, :16, :8] = 1  # part of A
    instances[2, :, 24:] = 1  # object B; the columns 16-23 are background
    cells = torch.zeros((4, 4, 4))  # C=4 features per cell: A-only, A-part, B, background
    cells[:, :2, 0] = 1
    cells[:2, :1, 0] = 1 / np.sqrt(2)
    cells[:2, :1, 1] = 1 / np.sqrt(2)
    cells[:, 3, 2] = 1
    cells[:, 2, 3] = 1
    # A part cell and an A-only cell overlap in 1 of 2 instances (Jaccard 1/2): cosine 1/sqrt(2) is off by 0.21,
    # every other pair is exact.
    grouped = grouping_loss(cells.permute(2, 0, 1)[None], instances)
    assert grouped < 0.01
    shuffled = grouping_loss(torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)), instances)
    assert shuffled > 10 * grouped

    data = [SyntheticDataset("train")[0]]
    trainer = Trainer(_conv_config(grouping_loss_weight=1.0), data)
    sample = trainer._next_sample()
    assert sample.instances.shape[0] >= sample.masks.shape[0] and 0 < trainer.step()["grouping"] < 1
