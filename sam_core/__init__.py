"""sam_core: the Segment Anything model, checkpoint loading and the interactive predictor (torch + numpy only)."""

from .build import CONFIGS, SamConfig, build_sam, build_sam_from_config, load_checkpoint
from .predictor import SamPredictor
from .sam import Sam
from .transforms import ResizeLongestSide

__all__ = [
    "CONFIGS",
    "ResizeLongestSide",
    "Sam",
    "SamConfig",
    "SamPredictor",
    "build_sam",
    "build_sam_from_config",
    "load_checkpoint",
]
