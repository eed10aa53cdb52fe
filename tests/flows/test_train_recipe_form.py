"""The retrain's form is the training recipe's: each knob's default, bounds and help come from
sam_core.train.TrainConfig, the form refuses what the trainer refuses, and what the form holds reaches the trainer."""

import dataclasses
from dataclasses import dataclass

import pytest
from pydantic import ValidationError, create_model

from flows.params import TRAIN_KNOBS, RoundParams, TrainSettings, recipe_fields
from sam_core.train import BOUNDS, TrainConfig, knob

RECIPE_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def test_every_form_knob_has_the_recipes_default_and_help():
    form = TrainSettings.model_fields
    for name in TRAIN_KNOBS:
        assert form[name].default == RECIPE_FIELDS[name].default, name
        assert form[name].description == RECIPE_FIELDS[name].metadata["doc"], name
    assert TrainSettings().recipe() == TrainConfig()


def _just_outside(bound: str, limit):
    step = 1 if isinstance(limit, int) else 1e-6
    return {"ge": limit - step, "gt": limit, "le": limit + step, "lt": limit}[bound]


@pytest.mark.parametrize(
    "name,bound",
    [(name, bound) for name in TRAIN_KNOBS for bound in BOUNDS if bound in RECIPE_FIELDS[name].metadata],
)
def test_the_form_and_the_trainer_refuse_the_same_value_outside_a_knobs_bounds(name, bound):
    value = _just_outside(bound, RECIPE_FIELDS[name].metadata[bound])
    with pytest.raises(ValidationError, match=name):
        TrainSettings(**{name: value})
    with pytest.raises(ValueError, match=name):
        TrainConfig(**{name: value}).validate()


def test_a_bad_pixel_loss_is_refused_by_the_form_before_a_run():
    with pytest.raises(ValidationError, match="pixel_loss"):
        RoundParams(retrain={"pixel_loss": "l2"})
    with pytest.raises(ValueError, match="pixel_loss"):
        TrainConfig(pixel_loss="l2").validate()


def test_the_forms_settings_reach_the_recipe_and_the_rest_goes_to_the_task():
    settings = TrainSettings(
        steps=7, freeze_norm_stats=True, encoder_lr_scale=0.5, workers=2, sources=["human"]
    )
    args = settings.retrain_args()
    assert args["recipe"] == dataclasses.replace(
        TrainConfig(), steps=7, freeze_norm_stats=True, encoder_lr_scale=0.5
    )
    assert {k: v for k, v in args.items() if k != "recipe"} == {
        "sources": ["human"],
        "workers": 2,
        "replay_split": None,
        "replay_ground_truth": None,
    }


def test_a_new_knob_needs_only_its_field_to_appear_in_a_form():
    @dataclass
    class Recipe:
        warmth: float = knob(0.5, "how warm", ge=0.0, le=1.0)

    form = create_model("Form", **recipe_fields(Recipe, ("warmth",)))
    assert form().warmth == 0.5 and form.model_fields["warmth"].description == "how warm"
    with pytest.raises(ValidationError, match="warmth"):
        form(warmth=1.5)


def test_a_knob_refuses_a_bound_it_does_not_know():
    with pytest.raises(TypeError, match="unknown bounds"):
        knob(1, "steps", minimum=1)


def test_the_demos_retrain_recipe_refuses_a_key_that_would_not_reach_the_trainer(monkeypatch):
    import flows.demo
    from flows.demo import RETRAIN_RECIPE, DemoConfig, checked_recipe, round_params

    data = {"ground_truth": "gt.json"}
    settings = round_params(
        "memory://demo", data, DemoConfig.quick(), 1, "assisted_manual", "embedded"
    ).retrain
    assert {k: getattr(settings, k) for k in RETRAIN_RECIPE} == RETRAIN_RECIPE  # every override arrives
    with pytest.raises(ValueError, match=r"'freeze_norm_stat' is no knob of sam_core.train.TrainConfig"):
        checked_recipe({"freeze_norm_stat": True, "masks_per_image": 12})
    with pytest.raises(ValueError, match=r"'warmup_steps' is a knob the retrain form does not show"):
        checked_recipe({"warmup_steps": 10})
    monkeypatch.setattr(flows.demo, "RETRAIN_RECIPE", {**RETRAIN_RECIPE, "focal_weigth": 2.0})
    with pytest.raises(ValueError, match="focal_weigth"):
        round_params("memory://demo", data, DemoConfig.quick(), 1, "assisted_manual", "embedded")
