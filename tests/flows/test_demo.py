"""The demo (`make demo`) end to end at its quick size: the start model, three stages with retrains, the figures it
writes."""

import dataclasses
import json

import pytest
from rich.console import Console
from rich.text import Text


@pytest.fixture(scope="module")
def quick_demo(prefect_harness, tmp_path_factory):
    """(output directory, figures) of one quick demo run, shared by this module's tests."""
    from flows.demo import DemoConfig, run_demo

    root = tmp_path_factory.mktemp("quick_demo")
    out = root / "demo"
    with open(root / "console.txt", "w") as console:  # a terminal's: the bar is drawn too
        figures = run_demo(
            out, DemoConfig.quick(), console=Console(file=console, force_terminal=True, width=150)
        )
    return out, figures


def test_quick_demo_runs_every_stage_and_writes_its_figures(quick_demo):
    out, figures = quick_demo
    assert [(f["round"], f["stage"]) for f in figures] == [
        (0, "start"),
        (1, "assisted_manual"),
        (2, "semi_automatic"),
        (3, "fully_automatic"),
    ]
    assert figures[0]["skipped"] == 1  # the corrupt demo image, recorded with its reason
    assert figures[0]["evaluated_model_version"] == "embedded"  # the model as it ships, not trained here
    versions = ["embedded"]
    for f in figures[1:]:
        if "retrain_skipped" in f:  # the stage added no mask: the round evaluates the version it started from
            assert f["masks"] == 0 and f["retrain_skipped"].endswith("nothing new to learn")
            assert f["evaluated_model_version"] == versions[-1]
        else:
            assert f["new_model_version"] == f"r{f['round']}" == f["evaluated_model_version"]
            versions.append(f["new_model_version"])
        assert 0.0 <= f["miou@1"] <= 1.0
    assert figures[1]["masks_per_image"] > 0  # the simulated annotator always finishes its masks
    assert json.loads((out / "figures.json").read_text())[-1]["round"] == 3
    assert (out / "figures.png").stat().st_size > 0
    from stores import Store

    store = Store((out / "engine" / "store").as_uri())
    rounds = store.rounds()
    assert sorted(rounds["round"].astype(int)) == [0, 1, 2, 3]
    from tasks.calibrate import read_calibration

    assert versions[:3] == ["embedded", "r1", "r2"]  # stages 1 and 2 always add the annotator's masks
    for version in versions:  # each version's automatic-mask thresholds were measured
        assert len(read_calibration(store, version)) > 0
    from flows.demo import DemoConfig
    from tasks.thresholds import crop_layout

    # stage 3's model was calibrated on stage 3's crops too, before the stage
    stage3 = versions[-2] if "retrain_skipped" not in figures[3] else versions[-1]
    layout = crop_layout(DemoConfig.quick().stage_autogen("fully_automatic"))
    assert layout and len(read_calibration(store, stage3, layout)) > 0
    models = store.models().set_index("model_version")
    assert [models.loc[v, "parent_version"] for v in versions[1:]] == versions[:-1]
    trained = models.loc["r2", "config"]
    assert trained["train"]["pixel_loss"] == "bce"  # the embedded model's own recipe
    # Each retrain replayed the shipped model's own scenes beside the stages' images, and they stay out of the
    # stages (their split is not train).
    assert models.loc["r1", "metrics"]["replay_images"] == DemoConfig.quick().replay_images == 1
    images = store.images().set_index("image_id")
    replayed = images[images["split"] == "replay"]
    assert len(replayed) == 1 and not store.masks()["image_id"].isin(replayed.index).any()
    # The flow's train settings reach the trainer: the encoder trains with its BatchNorm statistics kept, so
    # the new version owns its embeddings instead of borrowing its parent's.
    assert trained["train"]["freeze_norm_stats"] is True
    assert trained["train"]["encoder_lr_scale"] == 1.0
    assert trained["train"]["cache_embeddings"] is False
    assert trained["train"]["iou_target"] == "any_known_partial"
    assert "embeddings_of" not in trained
    images = store.images()
    assert set(images["split"]) == {"train", "test", "val", "replay"}
    # Each round labels its own block of train scenes in seed order (both imaging styles in each).
    names = images.set_index("image_id")["uri"].map(lambda uri: uri.rsplit("/", 1)[-1])
    masks = store.masks()
    for round, seeds in ((1, (0, 1)), (2, (2, 3))):
        labelled = set(names[masks.loc[masks["round"] == round, "image_id"]])
        assert labelled == {f"train-{seed:07d}.png" for seed in seeds}, (round, labelled)
    drawn = _plain((out.parent / "console.txt").read_text())
    for step in (
        "round 0 of 3 · evaluating embedded on the held-out images: images",
        "round 1 of 3 · round 1 assisted_manual: images",
        "round 2 of 3 · retraining r2: steps",
        "round 3 of 3 · evaluating r",
    ):
        assert step in drawn


def _plain(printed: str) -> str:
    """What a terminal showed, every frame of the bar included (each is drawn over the last after a "\\r")."""
    return "\n".join(Text.from_ansi(frame).plain for frame in printed.split("\r"))


def _pretend_rounds(monkeypatch):
    """flows.demo with every step stood in for: each round reports its steps as the real ones do, in a moment."""
    import flows.demo
    from flows.progress import watched_step

    def step(name: str, total: int) -> None:
        with watched_step(name) as report:
            for done in range(1, total + 1):
                report(done, total)

    def start_round(store_url, data, config):
        step("evaluating embedded on the held-out images: images", 2)
        return {"round": 0, "stage": "start", "evaluated_model_version": "embedded"}

    def run_round(store_url, data, config, round, stage, version):
        step(f"round {round} {stage}: images", 2)
        step(f"retraining r{round}: steps", 2)
        return {"round": round, "stage": stage, "new_model_version": f"r{round}"}

    monkeypatch.setattr(flows.demo, "make_data", lambda engine, config: {})
    monkeypatch.setattr(flows.demo, "round_images", lambda store_url, config: [])
    monkeypatch.setattr(flows.demo, "start_round", start_round)
    monkeypatch.setattr(flows.demo, "run_round", run_round)
    monkeypatch.setattr(flows.demo, "write_outputs", lambda out_dir, store_url, figures: None)


@pytest.mark.parametrize("terminal", [True, False])
def test_the_demo_shows_the_round_and_its_step_on_a_terminal_and_only_its_tables_elsewhere(
    monkeypatch, tmp_path, terminal
):
    import io

    from flows.demo import DemoConfig, run_demo

    _pretend_rounds(monkeypatch)
    out = io.StringIO()
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "spread.json").write_text("{}")  # an earlier demo's, measured on other retrains
    run_demo(
        tmp_path / "demo", DemoConfig.quick(), console=Console(file=out, force_terminal=terminal, width=150)
    )
    assert not (tmp_path / "demo" / "spread.json").exists()
    printed = _plain(out.getvalue())
    assert printed.count("SAM data engine demo") == 4  # the table after each round
    assert "demo finished" in printed
    steps = ("round 0 of 3 · evaluating embedded", "round 2 of 3 · round 2 semi_automatic: images")
    steps += ("round 3 of 3 · retraining r3: steps",)
    for step in steps:
        assert (step in printed) is terminal


def test_retrain_spread_reruns_the_demo_chain_with_other_seeds_and_leaves_the_demo_alone(
    quick_demo, capsys, load_script
):
    out, figures = quick_demo
    from stores import Store

    store = Store((out / "engine" / "store").as_uri())
    before = sorted(store.models()["model_version"])
    script = load_script("retrain_spread")
    # No --quick: the script reads the demo's sizes from its config.json (at the defaults, the chain's retrains
    # would take 75 steps each, and their evaluation 8 images).
    rows = script.main(["--demo", str(out), "--chains", "3", "--threads", "1"])
    demo_rows = [r for r in rows if r["chain"] == "demo"]
    assert [(r["round"], r["miou@1"]) for r in demo_rows] == [(f["round"], f["miou@1"]) for f in figures]
    chains = [(r["chain"], r["round"], r["model_version"]) for r in rows if r["chain"] != "demo"]
    expected, version = [], "embedded"
    for f in figures[1:]:  # a round whose retrain the demo skipped keeps its version in the chain too
        version = f"r{f['round']}-chain3" if "new_model_version" in f else version
        expected.append((3, f["round"], version))
    assert chains == expected
    for r in rows:
        assert 0.0 <= r["miou@1"] <= 1.0 and 0.0 <= r["miou@5"] <= 1.0
    assert set(script.spread(rows, "miou@1")) == {1, 2, 3}
    printed = capsys.readouterr().out
    assert "spread of miou@1 per round" in printed and "miou@1: r3 - r0 = " in printed
    written = json.loads((out / "spread.json").read_text())
    assert {key: set(per_round) for key, per_round in written.items()} == {
        "miou@1": {"1", "2", "3"},
        "miou@5": {"1", "2", "3"},
    }
    assert sorted(store.models()["model_version"]) == before  # the chains trained in a scratch copy


def test_the_demo_records_the_config_it_ran_with(quick_demo, tmp_path):
    from flows.demo import CONFIG_FILE, DemoConfig, read_config

    out, _ = quick_demo
    assert read_config(out) == DemoConfig.quick()
    assert read_config(tmp_path) is None  # a demo from before the file
    saved = json.loads((out / CONFIG_FILE).read_text())
    (tmp_path / CONFIG_FILE).write_text(json.dumps({**saved, "points_per_sid": 4}))
    with pytest.raises(ValueError, match=r"fields DemoConfig does not know: \['points_per_sid'\]"):
        read_config(tmp_path)
    # A demo from before calibrate_quality ranked its masks by predicted IoU, whatever the default is now.
    saved.pop("calibrate_quality")
    (tmp_path / CONFIG_FILE).write_text(json.dumps(saved))
    assert read_config(tmp_path) == dataclasses.replace(DemoConfig.quick(), calibrate_quality=False)
    # ... and one from before precision_confidence held its precision at the 95% bound.
    saved.pop("precision_confidence")
    (tmp_path / CONFIG_FILE).write_text(json.dumps(saved))
    assert read_config(tmp_path) == dataclasses.replace(
        DemoConfig.quick(), calibrate_quality=False, precision_confidence=0.95
    )


def test_a_rerun_first_clears_what_the_earlier_demo_left_for_the_tools(tmp_path):
    """A rerun killed before its first figures must not leave the earlier run's figures.json beside its own
    store: retrain_spread and the benchmarks would take it for a finished demo."""
    from flows.demo import CONFIG_FILE, FIGURES_FILE, SPREAD_FILE, clear_previous_run

    (tmp_path / "engine" / "store").mkdir(parents=True)
    for name in (FIGURES_FILE, SPREAD_FILE, CONFIG_FILE):
        (tmp_path / name).write_text("{}")
    clear_previous_run(tmp_path)
    # config.json stays: the run rewrites it before anything reads it.
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_FILE]


def test_retrain_spread_refuses_what_is_not_a_finished_demo(tmp_path, capsys, load_script):
    script = load_script("retrain_spread")
    with pytest.raises(SystemExit):
        script.main(["--demo", str(tmp_path), "--quick", "--chains", "1"])
    assert "not a demo's output directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.main(["--demo", str(tmp_path), "--chains", "0"])
    assert "--chains must be >= 1" in capsys.readouterr().err


def test_retrain_spread_verdict_weighs_the_last_gain_against_three_spreads(load_script):
    script = load_script("retrain_spread")
    rows = [
        {"chain": "demo", "round": 0, "miou@1": 0.30},
        {"chain": "demo", "round": 1, "miou@1": 0.40},
        {"chain": "demo", "round": 2, "miou@1": 0.45},
        {"chain": 5, "round": 1, "miou@1": 0.42},
        {"chain": 5, "round": 2, "miou@1": 0.44},
    ]
    spreads = script.spread(rows, "miou@1")
    assert spreads == pytest.approx({1: 0.02, 2: 0.01})
    assert script.verdict(rows, "miou@1", spreads) == (
        "miou@1: r2 - r0 = +0.150, above 3 x r2's spread (0.030); above 3 x the largest spread (0.060)"
    )
    wide = {1: 0.06, 2: 0.01}
    assert script.verdict(rows, "miou@1", wide) == (
        "miou@1: r2 - r0 = +0.150, above 3 x r2's spread (0.030); NOT above 3 x the largest spread (0.180)"
    )
    noisy = {1: 0.01, 2: 0.06}
    assert "NOT above 3 x r2's spread (0.180)" in script.verdict(rows, "miou@1", noisy)


def test_every_automatic_step_of_the_demo_uses_its_nms_grid_and_batch():
    """Stage 2's pre-fill, stage 3, the calibrations and the evaluations generate automatic masks with the demo's
    box NMS and CPU batch, and the calibrated thresholds are measured at the same NMS (tasks.thresholds takes it
    from these settings)."""
    from flows.demo import DemoConfig, round_params

    config = DemoConfig()
    data = {"ground_truth": "gt.json"}
    for round, stage in ((2, "semi_automatic"), (3, "fully_automatic")):
        params = round_params("memory://demo", data, config, round, stage, "r1")
        assert params.autogen.box_nms_thresh == config.box_nms_thresh < 0.7
        assert params.autogen.points_per_side == config.points_per_side
        assert params.evaluation.autogen.box_nms_thresh == config.box_nms_thresh
        batches = {params.autogen.points_per_batch, params.evaluation.autogen.points_per_batch}
        assert batches | {params.calibration.points_per_batch} == {config.points_per_batch}
        # stage 3 alone looks at crops, its NMS across them the filter's, by predicted IoU as calibrated; every
        # round's evaluation and calibration stay on the whole image, so the rounds' recall is measured alike
        crops = params.autogen.crop_n_layers
        assert crops == (config.stage3_crop_n_layers if stage == "fully_automatic" else 0)
        assert params.evaluation.autogen.crop_n_layers == params.calibration.crop_n_layers == 0
        if crops:
            assert params.autogen.crop_nms_thresh == 1.0 and params.filter.nms_iou == config.box_nms_thresh
    with pytest.raises(ValueError, match="stage3_crop_n_layers must be 0-3"):
        DemoConfig(stage3_crop_n_layers=4)
    # crop layer i's grid is points_per_side / factor**i, the reference's crop_n_points_downscale_factor
    sparse = DemoConfig(stage3_crop_n_layers=2, stage3_crop_points_downscale=2).stage_autogen(
        "fully_automatic"
    )
    assert (sparse.crop_n_layers, sparse.crop_n_points_downscale_factor) == (2, 2)
    assert config.stage_autogen("fully_automatic").crop_n_points_downscale_factor == 1
    with pytest.raises(ValueError, match="stage3_crop_points_downscale must be 1-16"):
        DemoConfig(stage3_crop_points_downscale=0)
    params = round_params(
        "memory://demo", data, DemoConfig(stage3_crop_n_layers=0), 3, "fully_automatic", "r2"
    )
    assert params.autogen.crop_n_layers == 0


def test_the_first_retrain_of_the_demo_trains_longest_and_each_stage_sets_its_encoder_lr():
    from flows.demo import ROUNDS, DemoConfig, round_params

    def retrains(config):
        return [
            round_params("memory://demo", {"ground_truth": "gt.json"}, config, r, stage, "r0").retrain
            for r, stage in ROUNDS
        ]

    light = retrains(DemoConfig(retrain_steps=(150, 75), stage_encoder_lr_scale=(("fully_automatic", 0.3),)))
    assert [r.steps for r in light] == [150, 75, 75]  # later rounds take the last entry
    assert [r.encoder_lr_scale for r in light] == [1.0, 1.0, 0.3]
    assert not any(r.freeze_image_encoder or r.cache_embeddings for r in light)
    frozen = retrains(DemoConfig(stage_encoder_lr_scale=(("semi_automatic", 0.0),)))
    assert [r.freeze_image_encoder for r in frozen] == [False, True, False]
    assert [r.cache_embeddings for r in frozen] == [False, True, False]


def test_a_demo_config_with_an_unknown_replay_domain_or_negative_replay_is_refused_by_name():
    from flows.demo import DemoConfig

    with pytest.raises(ValueError, match="replay_domain: 'cats' is no synthetic domain"):
        DemoConfig(replay_domain="cats")
    with pytest.raises(ValueError, match="replay_images must be >= 0"):
        DemoConfig(replay_images=-1)


def test_a_demo_config_with_no_retrain_steps_or_an_unknown_stage_is_refused_by_name():
    from flows.demo import DemoConfig

    for steps in ((), (150, 0)):
        with pytest.raises(ValueError, match="retrain_steps"):
            DemoConfig(retrain_steps=steps)
    with pytest.raises(ValueError, match="'fully_automatc'"):
        DemoConfig(stage_encoder_lr_scale=(("fully_automatc", 0.3),))
    with pytest.raises(ValueError, match="must be >= 0"):
        DemoConfig(stage_encoder_lr_scale=(("fully_automatic", -0.1),))
    with pytest.raises(ValueError, match="stage_annotator_order.*'semi_automatc'"):
        DemoConfig(stage_annotator_order=(("semi_automatc", "levels"),))
    with pytest.raises(ValueError, match="stage_annotator_order.*'smallest'"):
        DemoConfig(stage_annotator_order=(("semi_automatic", "smallest"),))


def test_each_demo_round_takes_its_listed_images_or_else_the_next_block_by_id():
    from flows.demo import DemoConfig, round_params

    config = DemoConfig(images_per_round=2)
    listed = {"ground_truth": "gt.json", "round_images": [["a", "b"], ["c", "d"], ["e", "f"]]}
    selection = round_params("memory://demo", listed, config, 2, "semi_automatic", "r1").images
    assert selection.image_ids == ["c", "d"] and selection.offset == 0
    selection = round_params("memory://demo", {"ground_truth": "gt.json"}, config, 3, "fully_automatic", "r2")
    assert selection.images.image_ids is None
    assert (selection.images.max_images, selection.images.offset) == (2, 4)


def test_the_demo_holds_every_calibrated_bar_at_its_precision_confidence():
    from flows.demo import ROUNDS, DemoConfig, round_params

    config = DemoConfig(precision_confidence=0.9)
    data = {"ground_truth": "gt.json"}
    for r, stage in ROUNDS:
        params = round_params("memory://demo", data, config, r, stage, "r0")
        bars = (params.confident, params.filter, params.evaluation.filter)
        assert [bar.precision_confidence for bar in bars] == [0.9] * 3
    for wrong in (1.0, 0.3):
        with pytest.raises(ValueError, match=f"precision_confidence must be in \\[0.5, 1\\).*{wrong}"):
            DemoConfig(precision_confidence=wrong)


def test_the_demo_annotator_labels_largest_first_unless_a_stage_is_given_an_order():
    from flows.demo import ROUNDS, DemoConfig, round_params

    def orders(config):
        data = {"ground_truth": "gt.json"}
        return [
            round_params("memory://demo", data, config, r, stage, "r0").annotator.order for r, stage in ROUNDS
        ]

    # Stage 1 the most prominent first, stage 2 what is missing at every level.
    assert orders(DemoConfig()) == ["largest", "levels", "largest"]
    assert orders(DemoConfig(stage_annotator_order=())) == ["largest"] * 3
