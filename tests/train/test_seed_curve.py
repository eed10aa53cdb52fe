"""scripts/seed_curve.py: the seed recipe's held-out figures per seed-set size and steps."""

import pytest


def test_one_row_per_run_and_a_rerun_trains_the_same_model(load_script):
    script = load_script("seed_curve")
    argv = ["--scenes", "1", "2", "--steps", "2", "--test-images", "1", "--clicks", "2", "--threads", "1"]
    rows = script.main(argv)
    assert [(r["scenes"], r["steps"], r["seed"]) for r in rows] == [(1, 2, 0), (2, 2, 0)]
    for r in rows:
        assert 0.0 <= r["miou@1"] <= r["miou@1_oracle"] <= 1.0 and 0.0 <= r["miou@2"] <= 1.0
        assert r["masks"] > 0
    # Every run starts from the same weights, so a rerun of the same size, steps and seed gives the same figures.
    again = script.main(argv[:1] + ["1"] + argv[3:])
    assert again[0]["miou@1"] == rows[0]["miou@1"] and again[0]["miou@2"] == rows[0]["miou@2"]


@pytest.mark.parametrize("argv", [["--scenes", "0"], ["--clicks", "4"], ["--test-images", "0"]])
def test_bad_sizes_are_refused(argv, capsys, load_script):
    with pytest.raises(SystemExit):
        load_script("seed_curve").main(argv)
    assert "--" in capsys.readouterr().err
