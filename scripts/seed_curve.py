"""How the demo's seed model depends on its training data and steps: is it limited by data or by steps?

A data engine can only teach a model that more masks would improve. This trains the demo's seed recipe (the
embedded model's image encoder, frozen, with a fresh prompt encoder and mask decoder; ``tasks.seed``) on the
first N synthetic train scenes for S steps, for every N and S asked, and prints held-out interactive mIoU after
1 and 5 clicks, on the synthetic test scenes, for each. If the figures rise with N at a fixed S, the seed is
limited by data and the rounds' masks can raise them; if they move only with S, only more steps can.

    .venv/bin/python scripts/seed_curve.py --scenes 2 16 48 --steps 150 450

Each run trains from the same initial weights; ``--seeds`` repeats each with other training seeds (the order
of images and prompts), which shows the run-to-run spread a retrain's effect has to exceed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Train scenes from here on: the demo writes its own images from the first train seeds.
FIRST_SCENE = 600_000


def seed_curve(
    scenes: list[int],
    steps: list[int],
    seeds: list[int],
    test_images: int,
    clicks: int,
    lr: float,
) -> list[dict]:
    """One row per (scenes, steps, seed): held-out mIoU@1 (confident and oracle), mIoU@``clicks`` and seconds."""
    from flows.demo import DemoConfig
    from sam_core.embedded import embedded_config_name, load_embedded
    from sam_core.evaluate import evaluate_interactive
    from sam_core.synthetic import scene, split_seeds
    from sam_core.train import train
    from tasks.seed import model_with_encoder, seed_train_config

    recipe = DemoConfig().seed_training()  # the demo's seed recipe; only steps and lr vary here
    encoder = load_embedded().image_encoder.state_dict()
    config_name = embedded_config_name()
    test = [scene(s, 256) for s in split_seeds("test", test_images)]
    rows = []
    for n in scenes:
        data = [scene(s, 256) for s in range(FIRST_SCENE, FIRST_SCENE + n)]
        for s in steps:
            for seed in seeds:
                started = time.monotonic()
                config = seed_train_config(
                    **{**recipe, "steps": s, "lr": lr}, config_name=config_name, seed=seed
                )
                model = train(config, data, model=model_with_encoder(config_name, encoder)).model
                result = evaluate_interactive(model, test, max_clicks=clicks)
                rows.append(
                    {
                        "scenes": n,
                        "steps": s,
                        "seed": seed,
                        "miou@1": result["miou@1_confident"],
                        "miou@1_oracle": result["miou@1_oracle"],
                        f"miou@{clicks}": result[f"miou@{clicks}_confident"],
                        "masks": result["masks"],
                        "seconds": time.monotonic() - started,
                    }
                )
                print(_row(rows[-1]), flush=True)
    return rows


def _row(row: dict) -> str:
    return "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())


def main(argv: list[str] | None = None) -> list[dict]:
    from flows.demo import DemoConfig
    from sam_core.evaluate import CLICKS_REPORTED

    demo = DemoConfig()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenes", type=int, nargs="+", default=[2, 16, 48], help="seed-set sizes (scenes)")
    parser.add_argument("--steps", type=int, nargs="+", default=[demo.seed_steps, 3 * demo.seed_steps])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds per run")
    parser.add_argument("--test-images", type=int, default=demo.test_images, help="held-out test scenes")
    parser.add_argument(
        "--clicks", type=int, default=demo.eval_clicks, choices=CLICKS_REPORTED, help="clicks per mask"
    )
    parser.add_argument("--lr", type=float, default=demo.seed_lr)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if min(args.scenes) < 1 or min(args.steps) < 1 or args.test_images < 1:
        parser.error("--scenes, --steps and --test-images must be >= 1")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return seed_curve(args.scenes, args.steps, args.seeds, args.test_images, args.clicks, args.lr)


if __name__ == "__main__":
    main()
