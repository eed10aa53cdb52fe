"""The numbers of SAM's automatic mask generator, named once (Kirillov et al. 2023 and Meta's published code).

The generator, the stage filter, the flows' forms, the CLI and the evaluation take their defaults from here, so a
reader finds "0.88" in one file and a changed default changes everywhere. The engine's own policies on top of
them live where they are decided: the semi-automatic stage's stricter bar (tasks.filter.CONFIDENT), the training
recipe (sam_core.train.TrainConfig), the demo's sizes (flows.demo.DemoConfig).
"""

POINTS_PER_SIDE = 32
"""An N x N grid of point prompts over the image (and over each crop, scaled down by layer)."""
POINTS_PER_BATCH = 64
"""Point prompts decoded together: one decoder pass."""
PRED_IOU_THRESH = 0.88
"""Keep a mask whose predicted IoU is above this: the paper's bar for a confident mask."""
STABILITY_SCORE_THRESH = 0.95
"""Keep a mask whose stability score (area at logit > +offset / area at logit > -offset) reaches this."""
STABILITY_SCORE_OFFSET = 1.0
"""The logit offset of the stability score."""
BOX_NMS_THRESH = 0.7
"""Box IoU above which the lower-scored of two masks is dropped (within a crop, and in the stage filter)."""
CROP_NMS_THRESH = 0.7
"""Box IoU above which the lower-scored of two masks from different crops is dropped."""
CROP_OVERLAP_RATIO = 512 / 1500
"""How much neighbouring crops overlap, as a fraction of the image's side (the reference's 512 / 1500)."""
MAX_AREA_FRACTION = 0.95
"""SA-1B dropped masks covering this fraction of the image or more."""
