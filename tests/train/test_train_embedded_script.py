"""scripts/train_embedded.py: a run that validates, keeps its best, resumes where it stopped, and installs
weights whose model card is generated from what the checkpoint records."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from sam_core.checkpoint import read_checkpoint
from sam_core.embedded import EMBEDDED_CHECKPOINT
from sam_core.recipes import EMBEDDED_RECIPE, training_parser
from sam_core.train import TrainConfig

TINY = ["steps=4", "images_per_step=1", "masks_per_image=2", "correction_points=1", "warmup_steps=1"]


@pytest.fixture(scope="module")
def script(load_script):
    return load_script("train_embedded")


def test_a_run_keeps_its_best_resumes_and_installs_with_a_generated_card(script, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    recipe = dataclasses.replace(EMBEDDED_RECIPE, **script.parse_overrides(EMBEDDED_RECIPE, TINY))
    script.run(run_dir, recipe, None, 2, False, "cpu", False, stop_at=2, val_scenes=1)
    state = torch.load(run_dir / "state.pt", weights_only=True)
    assert state["step"] == 2 and (run_dir / "best.pt").exists()
    script.run(run_dir, recipe, None, 2, False, "cpu", False, val_scenes=1)  # goes on from step 2
    curve = [json.loads(line) for line in (run_dir / "curve.jsonl").read_text().splitlines()]
    assert [row["step"] for row in curve] == [2, 4]
    assert curve[1]["cpu_seconds"] > curve[0]["cpu_seconds"] > 0
    best = read_checkpoint(run_dir / "best.pt")
    assert best["metadata"]["steps"] in (2, 4) and best["sam_config"]["image_encoder"] == "conv"
    # One stretch on one machine: the resumed session on the same device adds no segment.
    assert [(part["step"], part["device"]) for part in best["metadata"]["segments"]] == [(0, "cpu")]

    target = tmp_path / "weights" / "model.pt"
    target.parent.mkdir()
    record = script.install(run_dir / "best.pt", test_scenes=1, auto_scenes=1, target=target)
    assert set(record) >= {"interactive", "reliability", "automatic"}
    installed = torch.load(target, weights_only=True)
    assert installed["model"]["mask_decoder.iou_token.weight"].dtype == torch.float16
    card = (target.parent / "MODEL_CARD.md").read_text()
    assert card == script.model_card(installed)
    assert (
        f"{record['interactive']['miou@1_confident']:.3f}" in card and "Reliability of the IoU head" in card
    )
    assert f"- steps 0-{installed['metadata']['steps']} on " in card


def test_with_no_state_a_run_goes_on_from_the_installed_weights_and_their_step(script, tmp_path):
    installed = read_checkpoint(EMBEDDED_CHECKPOINT)
    step = installed["metadata"]["steps"]
    overrides = script.parse_overrides(EMBEDDED_RECIPE, [*TINY[1:], f"steps={step + 10}"])
    recipe = dataclasses.replace(EMBEDDED_RECIPE, **overrides)
    # hours bounds a broken resume that would start from step 0 instead
    script.run(tmp_path / "run", recipe, 0.01, 1000, True, "cpu", False, stop_at=step + 1, val_scenes=1)
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=True)
    assert state["step"] == step + 1 and state["seconds"] > installed["metadata"]["wall_seconds"]
    # The installed run's history goes on in this one: its curve, its recipe changes, then what changed now.
    # A run stopped between validations validates where it stopped (its last steps may hold the best weights).
    curve = [json.loads(line) for line in (tmp_path / "run" / "curve.jsonl").read_text().splitlines()]
    assert curve[:-1] == installed["metadata"]["curve"] and curve[-1]["step"] == step + 1
    changes = [json.loads(line) for line in (tmp_path / "run" / "changes.jsonl").read_text().splitlines()]
    assert changes[:-1] == installed["metadata"]["recipe_changes"]
    assert changes[-1]["step"] == step and changes[-1]["fields"]["steps"][1] == step + 10
    # Where it trained goes on too: the installed stretches, then this one if it ran elsewhere or otherwise.
    segments = [json.loads(line) for line in (tmp_path / "run" / "segments.jsonl").read_text().splitlines()]
    assert segments[: len(script.installed_segments(installed))] == script.installed_segments(installed)
    assert segments[-1]["device"] == "cpu" and segments[-1]["images_per_step"] == 1
    # A fresh optimizer: recorded, and its lr warms up again from the installed step.
    assert changes[-1]["fields"]["optimizer"][1].startswith("fresh AdamW")
    assert state["optimizer_start"] == step


def test_overrides_are_typed_and_unknown_fields_refused(script):
    assert script.parse_overrides(EMBEDDED_RECIPE, ["steps=10", "pixel_loss=focal", "ema_decay=0.5"]) == {
        "steps": 10,
        "pixel_loss": "focal",
        "ema_decay": 0.5,
    }
    with pytest.raises(SystemExit, match="FIELD=VALUE"):
        script.parse_overrides(EMBEDDED_RECIPE, ["stepz=10"])


def test_every_set_option_counts_not_only_the_last():
    parser = training_parser("a script", Path("run"), val_every=10)
    args = parser.parse_args(["--set", "steps=10", "lr=0.1", "--set", "ema_decay=0.5"])
    assert args.set == ["steps=10", "lr=0.1", "ema_decay=0.5"]
    assert parser.parse_args([]).set == []


def test_the_committed_model_card_is_what_the_committed_checkpoint_generates(script):
    installed = torch.load(EMBEDDED_CHECKPOINT, map_location="cpu", weights_only=True)
    assert (EMBEDDED_CHECKPOINT.parent / "MODEL_CARD.md").read_text() == script.model_card(installed)


def test_a_recipe_change_of_a_resumed_run_is_recorded_against_the_old_value_or_its_default(script):
    before = {"steps": 100, "lr": 5e-4, "metadata": {"a": 1}}  # written before grouping_loss_weight existed
    after = TrainConfig(steps=100, lr=1e-3, grouping_loss_weight=5.0, metadata={"a": 2})
    assert script.recipe_changes(before, after) == {"lr": [5e-4, 1e-3], "grouping_loss_weight": [0.0, 5.0]}
    assert script.recipe_changes(dataclasses.asdict(after), after) == {}


def test_the_gpu_sessions_predictor_check_finds_no_difference_between_the_cpu_and_itself(load_script):
    # scripts/gpu_session.py's comparison, run with the CPU as the "device": fp32 must agree exactly, and bf16
    # autocast must come back as arrays (numpy has no bfloat16) close to fp32.
    session = load_script("gpu_session")
    checks = session.predictor_paths("cpu", scenes=1)
    assert checks["clicks"] > 0
    assert checks["fp32"] == {"max_logit_diff": 0.0, "min_mask_iou": 1.0, "max_score_diff": 0.0}
    assert checks["bf16"]["min_mask_iou"] > 0.5 and checks["bf16"]["max_score_diff"] < 0.1
