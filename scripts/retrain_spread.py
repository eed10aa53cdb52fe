"""Is a demo's retrain gain above the training's own noise? Re-run its retrains with other training seeds.

A retrain's training seed decides the order of images, masks and clicks, nothing else. This takes a finished
demo (``make demo`` or ``sam-engine demo --out DIR``), copies its store to a scratch directory (the demo's own
store is never written), and re-runs the demo's chain of retrains, start model -> r1 -> r2 -> r3, on the same
stored masks and with the same settings, once per ``--chains`` offset k (each retrain's seed is its round + k; the
demo used k = 0). Each new version is scored like the demo's (held-out interactive mIoU after 1 and
``eval_clicks`` clicks, on the same test images). The demo's own figures are printed beside them, then the
spread of each round across chains (the demo's chain included) and the verdict: the last retrain's gain over
round 0 against three times that retrain's spread (the noise of the figure compared; round 0 has none, it is not
trained), and against three times the largest spread of any round (a stricter bar). The spread goes to
DIR/spread.json, and DIR/figures.png is redrawn with it as a band.

    .venv/bin/python scripts/retrain_spread.py --demo demo_output --chains 10 20

The demo's settings come from DIR/config.json. A demo from before that file ran at the defaults, or at
``DemoConfig.quick()`` sizes: pass ``--quick`` for those.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def retrain_spread(demo_dir: Path, chains: list[int], config, scratch: Path) -> list[dict]:
    """One row per (chain, round): {"chain", "round", "model_version", "miou@1", "miou@<clicks>", "seconds"}.

    Chain "demo" holds the demo's own recorded figures (round 0, the seed, included); chain k those of the
    retrains re-run with seed round + k. Raises ValueError when ``demo_dir`` is not a finished demo.
    """
    from flows.demo import REPLAY_SPLIT, ROUNDS, round_params
    from stores import Store
    from tasks.evaluate import evaluate
    from tasks.retrain import retrain

    engine = demo_dir / "engine"
    figures_path = demo_dir / "figures.json"
    if not (engine / "store").is_dir() or not figures_path.is_file():
        raise ValueError(f"{demo_dir} is not a demo's output directory (no engine/store or figures.json)")
    figures = json.loads(figures_path.read_text())
    if [f["round"] for f in figures] != [0] + [r for r, _ in ROUNDS]:
        raise ValueError(
            f"{figures_path} holds rounds {[f['round'] for f in figures]}: the demo did not finish"
        )
    clicks = config.eval_clicks
    rows = [
        {
            "chain": "demo",
            "round": f["round"],
            "model_version": f["evaluated_model_version"],
            "miou@1": f["miou@1"],
            f"miou@{clicks}": f[f"miou@{clicks}"],
            "seconds": None,
        }
        for f in figures
    ]
    store_dir = scratch / "store"
    shutil.copytree(engine / "store", store_dir)
    store_url = store_dir.as_uri()
    # round_params reads only the ground truth's path from the demo's data; the scratch store's images keep
    # pointing at the demo's image files.
    data = {"ground_truth": str(engine / "ground_truth.json")}
    replayed = engine / REPLAY_SPLIT / "ground_truth.json"
    if replayed.exists():  # the demo's retrains replayed these scenes; so do the chains'
        data["replay_ground_truth"] = str(replayed)
    versions = set(Store(store_url).models()["model_version"])
    start = figures[0]["evaluated_model_version"]
    for chain in chains:
        parent = start
        # Where the demo skipped a retrain (its stage added no mask), the chain keeps its version too.
        last = {**rows[0], "chain": chain}
        for round, stage in ROUNDS:
            if "new_model_version" not in figures[round]:
                last = {**last, "round": round, "seconds": 0.0}
                rows.append(last)
                continue
            started = time.monotonic()
            params = round_params(store_url, data, config, round, stage, parent)
            version = f"r{round}-chain{chain}"
            if version in versions:
                raise ValueError(f"model {version!r} exists in {demo_dir}'s store: pick other --chains")
            settings = params.retrain.model_copy(update={"seed": params.retrain.seed + chain})
            retrain.fn(store_url, parent, version, round, backend="local", **settings.retrain_args())
            evaluation = params.evaluation.model_copy(update={"autogen": None, "filter": None})
            metrics = evaluate.fn(store_url, version, **dict(evaluation))
            rows.append(
                {
                    "chain": chain,
                    "round": round,
                    "model_version": version,
                    "miou@1": metrics["miou@1"],
                    f"miou@{clicks}": metrics[f"miou@{clicks}"],
                    "seconds": time.monotonic() - started,
                }
            )
            print(_row(rows[-1]), flush=True)
            parent, last = version, rows[-1]
    return rows


def spread(rows: list[dict], key: str) -> dict[int, float]:
    """{round: max - min of ``key`` over the chains (the demo's included)} for the retrained rounds."""
    by_round: dict[int, list[float]] = {}
    for row in rows:
        if row["round"] > 0:
            by_round.setdefault(row["round"], []).append(row[key])
    return {r: max(v) - min(v) for r, v in sorted(by_round.items())}


def _row(row: dict) -> str:
    return "  ".join(
        f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items() if v is not None
    )


def main(argv: list[str] | None = None) -> list[dict]:
    from flows.demo import DemoConfig, read_config

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--demo", type=Path, required=True, help="the demo's output directory (its --out)")
    parser.add_argument(
        "--chains", type=int, nargs="+", default=[10, 20], help="seed offsets, one chain of retrains each"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a demo without config.json ran at DemoConfig.quick() sizes"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if min(args.chains) < 1:
        parser.error("--chains must be >= 1 (offset 0 is the demo's own chain)")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        config = read_config(args.demo)
    except ValueError as error:
        parser.error(str(error))
    if config is None:
        config = DemoConfig.quick() if args.quick else DemoConfig()
    with tempfile.TemporaryDirectory(prefix="retrain_spread_") as scratch:
        try:
            rows = retrain_spread(args.demo.resolve(), args.chains, config, Path(scratch))
        except ValueError as error:
            parser.error(str(error))
    print("\nevery chain (the demo's first):")
    for row in rows:
        print(_row(row))
    spreads = {}
    for key in ("miou@1", f"miou@{config.eval_clicks}"):
        spreads[key] = spread(rows, key)
        print(f"spread of {key} per round: " + ", ".join(f"r{r} {v:.3f}" for r, v in spreads[key].items()))
        print(verdict(rows, key, spreads[key]))
    write_spread(args.demo.resolve(), spreads)
    return rows


def verdict(rows: list[dict], key: str, spreads: dict[int, float]) -> str:
    """One line: the demo's last retrain against round 0 on ``key``, beside three times the last retrain's spread
    and three times the largest spread of any round."""
    demo = {r["round"]: r[key] for r in rows if r["chain"] == "demo"}
    last = max(demo)
    gain = demo[last] - demo[0]

    def against(noise: float, what: str) -> str:
        return f"{'above' if gain > noise else 'NOT above'} 3 x {what} ({noise:.3f})"

    own = against(3 * spreads[last], f"r{last}'s spread")
    return f"{key}: r{last} - r0 = {gain:+.3f}, {own}; {against(3 * max(spreads.values()), 'the largest spread')}"


def write_spread(demo_dir: Path, spreads: dict[str, dict[int, float]]) -> None:
    """DIR/spread.json ({figure: {round: spread}}) and DIR/figures.png redrawn with it as a band."""
    import fsspec

    from flows.demo import SPREAD_FILE, plot_figures
    from stores.fsio import atomic_write

    # Atomic: the demo's plot reads it, and a half-written file would break the next redraw.
    atomic_write(
        fsspec.filesystem("file"), str(demo_dir / SPREAD_FILE), json.dumps(spreads, indent=2).encode()
    )
    plot_figures(demo_dir, json.loads((demo_dir / "figures.json").read_text()))


if __name__ == "__main__":
    main()
