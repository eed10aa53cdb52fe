"""The TrainConfig options the embedded model's recipe uses: a fixed pool of scenes and repeated prompts."""

import dataclasses

import numpy as np
import pytest
import torch

from sam_core.train import TrainConfig, Trainer


def test_dataset_size_limits_the_scenes_so_cached_embeddings_are_reused(small_config):
    small_config.dataset_size, small_config.cache_embeddings = 2, True
    small_config.correction_points = small_config.no_point_iterations = 0
    trainer = Trainer(small_config)
    assert len(trainer.dataset) == 2
    for _ in range(4):
        trainer.step()
    assert set(trainer.embedding_cache) <= {0, 1}


def test_prompts_per_mask_repeats_each_mask_with_its_own_prompts(small_config):
    small_config.prompts_per_mask = 3
    trainer = Trainer(small_config)
    sample = trainer._next_sample()
    masks, boxes = sample.masks, sample.boxes
    n = masks.shape[0] // 3
    assert masks.shape[0] == boxes.shape[0] == 3 * n and n >= 1
    assert torch.equal(masks[:n], masks[n : 2 * n]) and torch.equal(masks[:n], masks[2 * n :])
    assert not torch.equal(boxes[:n], boxes[n : 2 * n]), "repeated boxes should get fresh noise"
    stats = trainer.step()
    assert stats["masks"] % 3 == 0 and np.isfinite(stats["loss"])


@pytest.mark.parametrize("field,value", [("prompts_per_mask", 0), ("dataset_size", 0)])
def test_bad_recipe_options_are_clear_errors(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value}).validate()


def _attention_peak_distance(decoder, prompt_encoder, gain_points: int = 32) -> float:
    """Median distance (in embedding cells) between a click and the image cell its token attends to most in
    the first token-to-image cross-attention, summed over heads."""
    gen = torch.Generator().manual_seed(0)
    size = prompt_encoder.input_image_size[0]
    clicks = torch.rand((gain_points, 1, 2), generator=gen) * size
    tokens = prompt_encoder.embed_points(clicks, torch.ones((gain_points, 1), dtype=torch.long), pad=False)
    grid_pe = prompt_encoder.get_dense_pe().flatten(2).transpose(1, 2)  # 1 x hw x C
    attention = decoder.transformer.layers[0].cross_attn_token_to_image
    q = attention.split_heads(attention.q_proj(tokens))  # B x heads x 1 x d
    k = attention.split_heads(attention.k_proj(grid_pe))  # 1 x heads x hw x d
    scores = (q @ k.transpose(-1, -2)).sum(dim=1)[:, 0]  # B x hw
    h, w = prompt_encoder.image_embedding_size
    peak = scores.argmax(dim=1)
    peak_xy = torch.stack([peak % w, peak // w], dim=1).float() + 0.5
    click_xy = clicks[:, 0] / size * torch.tensor([w, h])
    return float((peak_xy - click_xy).norm(dim=1).median())


@torch.no_grad()
def test_locality_init_makes_a_fresh_decoder_attend_where_the_click_is():
    from sam_core.train import build_model

    torch.manual_seed(0)
    default = build_model("tiny")
    torch.manual_seed(0)
    local = build_model("tiny", attention_init_gain=2.0)
    # 32 x 32 cells: a click's attention peak is a cell or two away with the init, anywhere without it
    assert _attention_peak_distance(local.mask_decoder, local.prompt_encoder) < 2.0
    assert _attention_peak_distance(default.mask_decoder, default.prompt_encoder) > 6.0
    attention = local.mask_decoder.transformer.final_attn_token_to_image
    assert torch.equal(attention.q_proj.weight, attention.k_proj.weight)


def test_fresh_decoder_replaces_prompt_encoder_and_decoder_but_keeps_the_image_encoder(
    small_config, tmp_path
):
    trainer = Trainer(small_config)
    path = tmp_path / "start.pt"
    trainer.save(path)
    small_config.init_checkpoint, small_config.fresh_decoder = str(path), True
    fresh = Trainer(small_config).model
    old = trainer.model
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            old.image_encoder.state_dict().values(), fresh.image_encoder.state_dict().values(), strict=True
        )
    )
    token = "transformer.layers.0.cross_attn_token_to_image.q_proj.weight"
    assert not torch.equal(old.mask_decoder.state_dict()[token], fresh.mask_decoder.state_dict()[token])


def test_known_mask_iou_scores_an_output_by_any_known_mask_under_the_click():
    from sam_core.losses import known_mask_iou

    cell, nucleus = torch.zeros(8, 8), torch.zeros(8, 8)
    cell[:4, :4] = 1
    nucleus[:2, :2] = 1
    instances = torch.stack([cell, nucleus])
    logits = torch.full((1, 3, 8, 8), -1.0)
    logits[0, 0, :4, :4] = 1  # the cell
    logits[0, 1, :2, :2] = 1  # the nucleus
    logits[0, 2] = 1  # the whole image
    inside_nucleus = known_mask_iou(logits, instances, torch.tensor([[1.0, 1.0]]))
    assert torch.allclose(inside_nucleus, torch.tensor([[1.0, 1.0, 0.25]]))
    # Outside the nucleus only the cell is under the click: a perfect nucleus mask is a poor answer there.
    inside_cell_only = known_mask_iou(logits, instances, torch.tensor([[3.0, 3.0]]))
    assert torch.allclose(inside_cell_only, torch.tensor([[1.0, 0.25, 0.25]]))
    on_background = known_mask_iou(logits, instances, torch.tensor([[6.0, 6.0]]))
    assert torch.equal(on_background, torch.zeros(1, 3))
    assert torch.equal(known_mask_iou(logits, instances[:0], torch.tensor([[1.0, 1.0]])), torch.zeros(1, 3))


def _first_pass_loss(trainer, sample, embedding, config) -> float:
    """interactive_loss of ``sample`` under ``config``, with the same prompts at every call (the generators
    reseeded). Looked up in sam_core.train at each call, so that a test may patch what it uses."""
    import sam_core.train as train

    trainer.generator.manual_seed(0)
    with torch.no_grad():
        value, _ = train.interactive_loss(
            trainer.model,
            embedding,
            sample.masks,
            False,
            sample.boxes,
            config,
            np.random.default_rng(0),
            trainer.generator,
            None,
            sample.instances,
        )
    return value.item()


def test_an_output_inside_a_labelled_mask_that_matches_none_may_be_an_unlabelled_part():
    from sam_core.losses import inside_unlabelled

    cell, nucleus = torch.zeros(8, 8), torch.zeros(8, 8)
    cell[:4, :4] = 1
    nucleus[:2, :2] = 1
    logits = torch.full((1, 4, 8, 8), -1.0)
    logits[0, 0, :4, :4] = 1  # the cell
    logits[0, 1, :2, :2] = 1  # the nucleus
    logits[0, 2, :5, :5] = 1  # the cell and more: a poor mask, not a part
    logits[0, 3, 6:, 6:] = 1  # somewhere else
    click = torch.tensor([[1.0, 1.0]])
    # Only the cell is labelled: the nucleus output lies inside it and matches nothing known.
    assert inside_unlabelled(logits, cell[None], click).tolist() == [[False, True, False, False]]
    # With the nucleus labelled too, that output is judged like any other.
    both = torch.stack([cell, nucleus])
    assert inside_unlabelled(logits, both, click).tolist() == [[False, False, False, False]]
    # A click on the background is under no known mask: every output is judged (its target is 0).
    assert not inside_unlabelled(logits, cell[None], torch.tensor([[6.0, 6.0]])).any()
    assert not inside_unlabelled(logits, cell[:0], click).any()


def test_iou_target_any_known_partial_leaves_out_only_unlabelled_insides(small_config, monkeypatch):
    """Where no output is an unlabelled inside, the partial target is any_known's; where every one is, the IoU
    head learns nothing from the pass."""
    import sam_core.train as train

    small_config.correction_points = small_config.no_point_iterations = 0
    small_config.iou_target = "any_known_partial"
    trainer = Trainer(small_config)
    sample = trainer._next_sample()
    assert sample.instances is not None and sample.instances.shape[0] >= sample.masks.shape[0]
    embedding = trainer._embedding(sample.index, sample.image).detach()

    def loss(iou_target: str, iou_loss_weight: float = 1.0) -> float:
        changes = {"iou_target": iou_target, "iou_loss_weight": iou_loss_weight}
        return _first_pass_loss(trainer, sample, embedding, dataclasses.replace(small_config, **changes))

    def every_output(unlabelled: bool):
        return lambda logits, *_: torch.full(logits.shape[:2], unlabelled, dtype=torch.bool)

    monkeypatch.setattr(train, "inside_unlabelled", every_output(False))
    assert loss("any_known_partial") == pytest.approx(loss("any_known"), rel=1e-6)
    monkeypatch.setattr(train, "inside_unlabelled", every_output(True))
    assert loss("any_known_partial") == pytest.approx(loss("any_known", 0.0), rel=1e-6)
    assert loss("any_known", 0.0) != pytest.approx(loss("any_known"), rel=1e-6)


def test_iou_target_any_known_changes_only_the_iou_heads_loss(small_config):
    """The same prompts, the same mask loss; only the IoU head's targets differ."""
    small_config.correction_points = small_config.no_point_iterations = 0
    trainer = Trainer(small_config)
    assert trainer._next_sample().instances is None  # the paper's rule needs no other instance
    small_config.iou_target = "any_known"
    sample = Trainer(small_config)._next_sample()
    assert sample.instances is not None and sample.instances.shape[0] >= sample.masks.shape[0]
    embedding = trainer._embedding(sample.index, sample.image).detach()

    def loss(iou_target: str, iou_loss_weight: float = 1.0) -> float:
        changes = {"iou_target": iou_target, "iou_loss_weight": iou_loss_weight}
        return _first_pass_loss(trainer, sample, embedding, dataclasses.replace(small_config, **changes))

    assert loss("prompted", 0.0) == loss("any_known", 0.0)
    assert loss("prompted") != loss("any_known")


def test_a_bad_iou_target_is_a_clear_error():
    with pytest.raises(ValueError, match="iou_target must be one of"):
        TrainConfig(iou_target="nearest").validate()
