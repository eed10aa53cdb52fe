"""The TrainConfig options the embedded model's recipe uses: a fixed pool of scenes and repeated prompts."""

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
    _, _, masks, boxes = trainer._next_sample()
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
