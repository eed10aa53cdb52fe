"""The demo (`make demo`) end to end at its quick size: seed, three stages with retrains, the figures it writes."""

import json

from rich.console import Console


def test_quick_demo_runs_every_stage_and_writes_its_figures(prefect_harness, tmp_path):
    from flows.demo import DemoConfig, run_demo

    out = tmp_path / "demo"
    figures = run_demo(out, DemoConfig.quick(), console=Console(file=open(tmp_path / "console.txt", "w")))
    assert [(f["round"], f["stage"]) for f in figures] == [
        (0, "seed"),
        (1, "assisted_manual"),
        (2, "semi_automatic"),
        (3, "fully_automatic"),
    ]
    assert figures[0]["skipped"] == 1  # the corrupt demo image, recorded with its reason
    for f in figures[1:]:
        assert (
            f["new_model_version"] == f"r{f['round']}"
            and f["evaluated_model_version"] == f["new_model_version"]
        )
        assert 0.0 <= f["miou@1"] <= 1.0
    assert figures[1]["masks_per_image"] > 0  # the simulated annotator always finishes its masks
    assert json.loads((out / "figures.json").read_text())[-1]["round"] == 3
    assert (out / "figures.png").stat().st_size > 0
    from stores import Store

    store = Store((out / "engine" / "store").as_uri())
    rounds = store.rounds()
    assert sorted(rounds["round"].astype(int)) == [0, 1, 2, 3]
    from tasks.calibrate import read_calibration

    for version in ("seed", "r1", "r2", "r3"):  # each version's automatic-mask thresholds were measured
        assert len(read_calibration(store, version)) > 0
    models = store.models().set_index("model_version")
    assert models.loc["r1", "metrics"]["replay_images"] == 4  # the seed set, replayed in every retrain
