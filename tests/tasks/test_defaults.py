"""Every place that runs the automatic mask generator or filters its masks defaults to the same published numbers
(sam_core.defaults): the generator itself, the stage's settings, the stage filter and the CLI's options."""

import inspect

from flows import cli
from sam_core import defaults
from sam_core.automatic_mask_generator import AutomaticMaskGenerator
from tasks.autogen import AutogenSettings
from tasks.filter import FilterSettings


def test_the_stage_settings_default_to_the_generators_own_defaults():
    generator = inspect.signature(AutomaticMaskGenerator.__init__).parameters
    settings = AutogenSettings()
    for name in AutogenSettings.model_fields:
        assert getattr(settings, name) == generator[name].default, name


def test_the_stage_filter_and_the_cli_default_to_the_papers_thresholds():
    stage = FilterSettings()
    assert (stage.min_predicted_iou, stage.min_stability_score) == (
        defaults.PRED_IOU_THRESH,
        defaults.STABILITY_SCORE_THRESH,
    )
    assert (stage.nms_iou, stage.max_area_fraction) == (defaults.BOX_NMS_THRESH, defaults.MAX_AREA_FRACTION)
    assert cli.POINTS_PER_SIDE.default == defaults.POINTS_PER_SIDE
    assert cli.PRED_IOU_THRESH.default == defaults.PRED_IOU_THRESH
    assert cli.STABILITY_THRESH.default == defaults.STABILITY_SCORE_THRESH
