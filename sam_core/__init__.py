"""sam_core: the Segment Anything model and its algorithms (torch + numpy only).

- the model, checkpoint loading and the interactive predictor (``build_sam``, ``SamPredictor``),
- the fully automatic stage (``AutomaticMaskGenerator``),
- the embedded default model trained by our own trainer (``load_embedded``).
"""

from .automatic_mask_generator import AutomaticMaskGenerator
from .build import CONFIGS, SamConfig, build_sam, build_sam_from_config
from .checkpoint import load_checkpoint
from .embedded import load_embedded
from .predictor import SamPredictor
from .sam import Sam
from .transforms import ResizeLongestSide

__all__ = [
    "CONFIGS",
    "AutomaticMaskGenerator",
    "ResizeLongestSide",
    "Sam",
    "SamConfig",
    "SamPredictor",
    "build_sam",
    "build_sam_from_config",
    "load_checkpoint",
    "load_embedded",
]
