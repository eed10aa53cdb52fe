"""Shared fixtures of the text-prompt tests: the embedded model with a fresh text path and the embedded text
encoder, built once; one synthetic scene with its phrases."""

from __future__ import annotations

import pytest
import torch

from sam_core.phrases import scene_phrases
from sam_core.synthetic import make_scene
from sam_core.text_model import make_text_encoder, text_model_from_checkpoint

SCENE_SEED = 1_000_000  # a validation scene that offers every kind of phrase


@pytest.fixture(scope="session")
def text_model():
    torch.manual_seed(0)
    return text_model_from_checkpoint(text_dim=128)


@pytest.fixture(scope="session")
def embedded_text_encoder():
    torch.manual_seed(0)
    return make_text_encoder("embedded").eval()


@pytest.fixture(scope="session")
def scene():
    return make_scene(SCENE_SEED)


@pytest.fixture(scope="session")
def phrases(scene):
    return scene_phrases(scene, SCENE_SEED)
