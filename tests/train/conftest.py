"""Fixtures for the training tests: one thread (the machine is shared) and small configs."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def small_config():
    from sam_core.train import TrainConfig

    return TrainConfig(
        steps=6, masks_per_image=2, warmup_steps=1, correction_points=1, no_point_iterations=1, log_every=0
    )
