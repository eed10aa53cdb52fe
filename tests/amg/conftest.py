"""Fixtures for the automatic mask generator tests: models (ours and the reference, same weights) and images."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # amg_helpers (tests run with --import-mode=importlib)

from amg_helpers import ColourBlobSam, synthetic_image, tiny_model_pair  # noqa: E402


@pytest.fixture(scope="session")
def blob_model():
    return ColourBlobSam()


@pytest.fixture(scope="session")
def images():
    """Three small non-square scenes (landscape, portrait, odd sizes)."""
    return [synthetic_image(0, 96, 128), synthetic_image(1, 120, 88), synthetic_image(2, 101, 131)]


@pytest.fixture(scope="session")
def tiny_models():
    """(reference Sam, our Sam) in the "tiny" config with the same random weights."""
    return tiny_model_pair()
