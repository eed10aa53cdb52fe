"""How many validation scenes a calibration needs: automatic-mask precision and recall of a finished demo's
versions on more held-out scenes than the demo scores, at thresholds calibrated on the demo's validation scenes or
on a given number of them.

A calibration keeps the thresholds whose precision reaches the target at its 95% Wilson lower bound
(tasks.thresholds.operating_point), so on few scenes the bound, not the model, sets how strict they are. This copies
the demo's store to a scratch folder (the demo's own store is never written), adds test and validation scenes of
the demo's domain, and for each version the demo evaluated: calibrates it on ``--val`` scenes (0: keeps the demo's
own calibration), then scores its automatic masks at the demo's target precision on ``--test`` scenes.

    .venv/bin/python benchmarks/bench_calibration_scenes.py --demo demo_output --test 24 --val 0
    .venv/bin/python benchmarks/bench_calibration_scenes.py --demo demo_output --test 24 --val 8
    .venv/bin/python benchmarks/bench_calibration_scenes.py --demo demo_output --val 8 --versions r2 \
        --min-region-area 25

``--min-region-area`` cleans the candidates (holes filled, islands dropped under that many pixels) in the
calibration and the scoring alike; it needs ``--val`` (the demo's own calibration holds its own cleaning).
``--crop-layers N`` calibrates and scores the generator stage 3 runs with N crop layers (DemoConfig.stage_autogen:
the whole image and its zoomed-in crops, NMS across crops by predicted IoU); it needs ``--val`` too:

    .venv/bin/python benchmarks/bench_calibration_scenes.py --demo demo_output --val 8 --test 12 --versions r2 \
        --crop-layers 1

One line per version: its thresholds, precision, recall and kept masks per test scene.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows.demo import DemoConfig, read_config  # noqa: E402
from tasks.calibrate import calibrate  # noqa: E402
from tasks.demo_data import write_synthetic_images  # noqa: E402
from tasks.evaluate import evaluate  # noqa: E402
from tasks.ingest import ingest  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, required=True, help="a finished demo's output folder")
    parser.add_argument("--test", type=int, default=24, help="held-out scenes to score on")
    parser.add_argument(
        "--val", type=int, default=0, help="validation scenes to calibrate on (0: the demo's)"
    )
    parser.add_argument(
        "--domain", default=None, help="the scenes' domain (default: the demo's, from its config.json)"
    )
    parser.add_argument(
        "--versions", nargs="*", help="the versions to score (default: every one the demo evaluated)"
    )
    parser.add_argument(
        "--min-region-area",
        type=int,
        default=None,
        help="clean masks of holes and islands under this many px (default: the demo's DemoConfig)",
    )
    parser.add_argument(
        "--crop-layers",
        type=int,
        default=0,
        choices=range(4),
        help="score stage 3's generator with this many crop layers (default 0: the evaluations' whole image)",
    )
    parser.add_argument(
        "--crop-points-downscale",
        type=int,
        default=None,
        help="crop layer i's grid is the demo's points per side / this**i (default: the demo's DemoConfig)",
    )
    parser.add_argument(
        "--rank-by",
        choices=("quality", "predicted_iou"),
        default=None,
        help="keep and rank masks by calibrated quality (calibrate_quality) or by predicted IoU alone (default: as "
        "the demo did; one from before calibrate_quality ranked by predicted IoU)",
    )
    args = parser.parse_args()
    figures_path = args.demo / "figures.json"
    if not figures_path.is_file():
        raise SystemExit(f"{args.demo} is not a finished demo: it has no figures.json")
    versions = list(dict.fromkeys(r["evaluated_model_version"] for r in json.loads(figures_path.read_text())))
    if args.versions:
        unknown = sorted(set(args.versions) - set(versions))
        if unknown:
            raise SystemExit(f"{args.demo} evaluated no version {unknown}: it has {versions}")
        versions = args.versions
    config = read_config(args.demo) or DemoConfig()
    domain = args.domain or config.domain
    if args.min_region_area is not None:
        if not args.val:
            raise SystemExit(
                "--min-region-area needs --val: the demo's own calibration holds its own cleaning"
            )
        config = dataclasses.replace(config, min_mask_region_area=args.min_region_area)
    if args.crop_layers and not args.val:
        raise SystemExit("--crop-layers needs --val: the demo calibrated its versions on the whole image")
    config = dataclasses.replace(
        config,
        points_per_side=config.eval_points_per_side,
        stage3_crop_n_layers=args.crop_layers,
        stage3_crop_points_downscale=config.stage3_crop_points_downscale
        if args.crop_points_downscale is None
        else args.crop_points_downscale,
        calibrate_quality=config.calibrate_quality if args.rank_by is None else args.rank_by == "quality",
    )
    autogen = config.stage_autogen("fully_automatic")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        shutil.copytree(args.demo / "engine" / "store", scratch / "store")
        url = (scratch / "store").as_uri()
        # The splits' scenes are numbered from the same seeds as the demo's, so its own test and val scenes are
        # among these and ingest skips them (an image is its bytes' hash).
        data = write_synthetic_images(
            scratch / "data", train=0, test=args.test, corrupt=0, val=max(args.val, 1), domain=domain
        )
        ingest.fn(url, [data["test_dir"]], split="test")
        ingest.fn(url, [data["val_dir"]], split="val")
        calibrated_on = f"{args.val} new val scenes" if args.val else "the demo's val scenes"
        print(
            f"calibrated on {calibrated_on}, scored on {args.test} test scenes, target {config.auto_precision}, "
            f"regions under {config.min_mask_region_area} px cleaned, {args.crop_layers} crop layers"
        )
        for version in versions:
            if args.val:
                settings = (
                    config.calibration(data["ground_truth"])
                    .for_generator(autogen)
                    .model_copy(update={"max_images": args.val})
                )
                calibrate.fn(url, version, settings)
            m = evaluate.fn(
                url,
                version,
                data["ground_truth"],
                split="test",
                max_images=args.test,
                max_clicks=1,
                max_masks_per_image=1,  # the clicks are not what this measures
                autogen=autogen,
                filter=config.stage3_filter(),
                amg_max_images=args.test,
            )
            # A point on quality (FilterSettings.calibrate_quality) has no predicted-IoU threshold.
            bar = (
                f"quality >= {_threshold(m['amg_quality_thresh'])}"
                if m.get("amg_quality_thresh") is not None
                else f"pred IoU >= {_threshold(m['amg_pred_iou_thresh'])}"
            )
            print(
                f"{version:>10}: {bar}, "
                f"stability >= {_threshold(m['amg_stability_thresh'])}, "
                f"precision {m['amg_precision']:.3f}, recall {m['amg_recall']:.3f}, "
                f"{m['amg_masks_per_image']:.1f} masks a scene ({m['amg_images']} scenes)"
            )


def _threshold(value: float | None) -> str:
    return "none reaches the target" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
