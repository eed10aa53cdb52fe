"""Where the shipped weights live (sam_core/weights/): the embedded model and the text path trained on top of it.

A leaf module, importing nothing of the project, so that the checkpoint reader (sam_core.checkpoint) can complete a
text adapter with its base without an import cycle; sam_core.embedded loads them.
"""

from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).parent / "weights"
EMBEDDED_CHECKPOINT = WEIGHTS_DIR / "sam_tiny_synthetic.pt"
# The embedded model's text path (sam_core.text_model), shipped as an adapter on top of it
# (sam_core.checkpoint.text_adapter): what answers text prompts when no other text model is named. See
# TEXT_MODEL_CARD.md there; scripts/train_text.py --install-from writes both.
EMBEDDED_TEXT_CHECKPOINT = WEIGHTS_DIR / "sam_tiny_synthetic_text.pt"
