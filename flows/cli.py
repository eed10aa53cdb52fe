"""`sam-engine`: the data engine from the command line.

    sam-engine demo                          the whole engine on generated images (make demo)
    sam-engine ingest URI... [--split S]     register images (files, folders, globs; any fsspec URL)
    sam-engine embed [--model-version V]     image embeddings for every image not yet embedded
    sam-engine round --stage STAGE ...       one round: a stage, then retrain and evaluate
    sam-engine find PHRASE --round N -m V    a text round: every instance of a phrase as automatic masks
    sam-engine train / eval                  retrain a model version / evaluate one on held-out images
    sam-engine calibrate GROUND_TRUTH        a version's automatic-mask thresholds, measured on labelled images
    sam-engine export coco|sa1b DEST         the masks as COCO JSON or SA-1B per-image JSON
    sam-engine query images|masks|models|rounds
    sam-engine segment IMAGE --out PNG       automatic masks of one image, drawn over it
    sam-engine segment IMAGE --text PHRASE   the masks a phrase names (a text model: scripts/train_text.py)
    sam-engine model add VERSION CONFIG CHECKPOINT
    sam-engine upgrade                       rewrite older masks files in the current schema
    sam-engine labelstudio ...               Label Studio for people (when installed)

Settings come from the environment (SAM_ENGINE_STORE, SAM_ENGINE_HOME, SAM_ENGINE_RAY_ADDRESS, PREFECT_API_URL;
see tasks/settings.py); --store overrides the store.

`segment` is in flows/segment_cli.py, `labelstudio` in flows/labelstudio_cli.py, and what the commands share
(options, the store they open, the error line) in flows/cli_common.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer
import typer.core

import flows  # noqa: F401  (sets the Prefect defaults before anything imports prefect)
from flows.cli_common import (
    CROP_LAYERS,
    MIN_REGION_AREA,
    MODEL,
    ONLY_ROUND,
    ONLY_STAGE,
    POINTS_PER_SIDE,
    PRECISION_CONFIDENCE,
    PRED_IOU_THRESH,
    STABILITY_THRESH,
    STAGE_HELP,
    STORE,
    Backend,
    confident_filter,
    existing_store,
    fail,
    form_default,
    fraction,
    new_store_url,
    on_model_version,
    print_json,
    read,
)
from flows.data_engine_round import data_engine_round
from flows.demo import DemoConfig, run_demo
from flows.fully_automatic import fully_automatic
from flows.labelstudio_cli import app as labelstudio_app
from flows.params import (
    EmbedSettings,
    EvalSettings,
    FullyAutomaticParams,
    ImageSelection,
    RetrainParams,
    RoundParams,
    TrainSettings,
)
from flows.progress import progress_bar, step_bar, watching
from flows.retrain import retrain_flow
from flows.segment_cli import segment
from flows.stages import Stage
from sam_core.text_encoder import check_phrase
from sam_core.train import TrainConfig
from stores import Store
from tasks.autogen import AutogenSettings
from tasks.calibrate import CalibrationSettings, read_calibration
from tasks.calibrate import calibrate as calibrate_task
from tasks.embed import embed as embed_task
from tasks.evaluate import evaluate
from tasks.export import ExportFormat, export
from tasks.filter import FilterSettings
from tasks.ingest import IMAGE_EXTENSIONS
from tasks.ingest import ingest as ingest_task
from tasks.models import check_checkpoint, check_new_model, register_model
from tasks.ray_cluster import shutdown_ray
from tasks.thresholds import crop_layout, filter_operating_point

app = typer.Typer(
    help="The SAM data engine: ingest images, embed them, run annotation rounds (assisted-manual, "
    "semi-automatic, fully automatic), retrain, evaluate, export. Settings come from the environment "
    "(SAM_ENGINE_STORE, SAM_ENGINE_HOME, SAM_ENGINE_RAY_ADDRESS, PREFECT_API_URL); --store overrides the store.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


def _option_type(param, ctx) -> str | None:
    """What --help prints after an option: its metavar (URI, N, VERSION, ...), a Literal's choices, or nothing (a
    flag). Typer would print the Python type (<str>, <list[str]>, <bool>), which tells a newcomer nothing."""
    if param.metavar:
        return param.metavar
    if param.type_descriptor.is_choice:
        return "|".join(str(choice) for choice in param.type_descriptor.choices)
    return None


def _argument_type(param, ctx) -> str | None:
    """An argument's name column already shows its metavar (URI, GROUND_TRUTH, ...): no type after it."""
    return None


# typer (0.29) has no setting for this; every option and argument of this CLI names its value with a metavar.
typer.core.TyperOption.display_type_rich = _option_type
typer.core.TyperArgument.display_type_rich = _argument_type

query_app = typer.Typer(help="Look at the store's tables (pandas underneath; see stores.query for more).")
model_app = typer.Typer(help="The models registry: register checkpoints as model versions.")
app.add_typer(query_app, name="query")
app.add_typer(model_app, name="model")

app.add_typer(labelstudio_app, name="labelstudio")


Domain = Literal["cells", "faint_cells", "shapes"]  # sam_core.domains.DOMAINS


@app.command()
def demo(
    out: Path = typer.Option(Path("demo_output"), metavar="DIR", help="output directory (overwritten)"),
    quick: bool = typer.Option(False, help="tiny sizes: a smoke test of the same path (about a minute)"),
    train_backend: Backend = typer.Option("local", help="'local' (in process) or 'ray' (Ray Train)"),
    checkpoint: str = typer.Option(
        None,
        metavar="PATH",
        help="the model to adapt (a SAM checkpoint; default: the embedded model as it ships)",
    ),
    domain: Domain = typer.Option(
        "faint_cells",
        help="the generated images: microscopy-like 'faint_cells' (low contrast, noisy), 'cells' or 'shapes'",
    ),
) -> None:
    """Adapt a model to a new image domain with the data engine: the model as it ships, then stages 1, 2 and 3,
    each followed by a retrain, a calibration and a held-out evaluation.

    Prints a table of figures after each round and writes figures.json, figures.png and mask overlays to OUT.
    """
    if checkpoint is not None:  # before minutes of work, not after
        try:
            check_checkpoint(checkpoint, "pretrained")
        except OSError as exc:
            fail(exc)
    config = DemoConfig.quick() if quick else DemoConfig()
    config.train_backend = train_backend
    config.start_checkpoint = checkpoint
    config.domain = domain
    try:
        run_demo(out, config)
    finally:
        shutdown_ray()


@app.command()
def ingest(
    uris: list[str] = typer.Argument(
        ..., metavar="URI", help="image files, folders or glob patterns (any fsspec URL)"
    ),
    split: str = typer.Option(
        "train", metavar="SPLIT", help="split the new images belong to (train, val, test, ...)"
    ),
    store: str = STORE,
) -> None:
    """Register images in the store (image id = sha256 of the bytes); unreadable files are listed and skipped.

    Exits with code 2 when nothing could be registered (then no store is created)."""
    url = new_store_url(store)
    try:
        with progress_bar("reading files") as report:
            result = ingest_task.fn(url, uris, split=split, on_progress=report)
    except (OSError, ValueError) as exc:
        fail(exc)
    for unmatched in result.unmatched if result.image_ids else []:  # else the error line says it
        typer.secho(f"warning: {unmatched['reason']}", fg=typer.colors.YELLOW, err=True)
    for skipped in result.skipped:
        detail = f" ({skipped['detail']})" if skipped["detail"] else ""
        typer.secho(
            f"skipped {skipped['uri']}: {skipped['reason']}{detail}", fg=typer.colors.YELLOW, err=True
        )
    counts = ", ".join(f"{n} {reason}" for reason, n in result.skipped_by_reason().items())
    skipped = f"{_files(len(result.skipped))} skipped ({counts})" if result.skipped else ""
    if not result.image_ids:
        causes = [u["reason"] for u in result.unmatched] + ([skipped] if skipped else [])
        fail(ValueError(f"no image registered from {' '.join(uris)}: {'; '.join(causes)}"))
    if skipped:
        typer.secho(skipped, fg=typer.colors.YELLOW, err=True)
    if result.ignored:
        typer.echo(f"ignored {_files(result.ignored)} not ending in {', '.join(IMAGE_EXTENSIONS)}", err=True)
    typer.echo(f"{len(result.image_ids)} images ({result.new} new) in {url}")


def _files(n: int) -> str:
    return f"{n} file" if n == 1 else f"{n} files"


@app.command()
def embed(
    model_version: str = MODEL,
    store: str = STORE,
    backend: Backend = typer.Option(
        "ray", help="'ray' (actor pool; GPUs when the cluster has them) or 'local'"
    ),
    batch_size: int = typer.Option(
        form_default(EmbedSettings, "batch_size"), min=1, metavar="N", help="images per encoder batch"
    ),
    actors: int = typer.Option(
        form_default(EmbedSettings, "actors"), min=1, metavar="N", help="encoder actors on Ray"
    ),
) -> None:
    """Compute image embeddings for every image that has none for the model version (cached ones are kept)."""
    with on_model_version(store, model_version, "embedding images with") as (opened, version, report):
        result = embed_task.fn(
            opened.url, version, batch_size=batch_size, actors=actors, backend=backend, on_progress=report
        )
    typer.echo(f"embedded {len(result.embedded)}, already cached {result.skipped_existing}")
    for failed in result.failed:
        typer.secho(f"failed {failed['uri']}: {failed['reason']}", fg=typer.colors.YELLOW)


@app.command("round")
def round_(
    stage: Stage = typer.Option(..., metavar="STAGE", help=STAGE_HELP),
    round: int = typer.Option(..., "--round", "-r", min=0, metavar="N", help="round number"),
    model_version: str = MODEL,
    store: str = STORE,
    ground_truth: str = typer.Option(
        None, metavar="PATH", help="COCO JSON for the simulated annotator and evaluation"
    ),
    max_images: int = typer.Option(None, min=1, metavar="N", help="at most this many images of the split"),
    split: str = typer.Option("train", metavar="SPLIT", help="the images the stage works on"),
    new_model_version: str = typer.Option(
        None, metavar="VERSION", help="name of the retrained version (default r<round>)"
    ),
    retrain_steps: int = typer.Option(TrainConfig.steps, min=0, metavar="N", help="0: no retrain"),
    train_backend: Backend = typer.Option("ray", help="'ray' (Ray Train) or 'local'"),
    target_precision: float = fraction(
        None,
        "P",
        "automatic masks: thresholds from the model's calibration at this precision (sam-engine calibrate) "
        "instead of the paper's fixed ones; the new version is calibrated on the --calibration-split images",
    ),
    confident_precision: float = fraction(
        None,
        "P",
        "the same for the semi-automatic stage's pre-filled masks (set it above --target-precision)",
    ),
    calibration_split: str = typer.Option(
        form_default(CalibrationSettings, "split"),
        metavar="SPLIT",
        help="labelled images (in --ground-truth) to calibrate on",
    ),
    points_per_side: int = POINTS_PER_SIDE,
    min_region_area: int = MIN_REGION_AREA,
    crop_layers: int = CROP_LAYERS,
    pred_iou_thresh: float = PRED_IOU_THRESH,
    stability_thresh: float = STABILITY_THRESH,
    match_iou: float = fraction(
        form_default(FilterSettings, "match_iou"),
        "IOU",
        "with --target-precision / --confident-precision: the IoU at which a mask counts as right",
        min=0.01,
    ),
    precision_confidence: float = PRECISION_CONFIDENCE,
) -> None:
    """One data-engine round: the stage, then a retrain on all accepted masks, then a held-out evaluation."""
    calibrated = {} if target_precision is None else {"target_precision": target_precision}
    try:
        stage3 = FilterSettings(
            min_predicted_iou=pred_iou_thresh,
            min_stability_score=stability_thresh,
            match_iou=match_iou,
            precision_confidence=precision_confidence,
            **calibrated,
        )
        autogen = AutogenSettings(
            points_per_side=points_per_side,
            pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_thresh,
            min_mask_region_area=min_region_area,
            crop_n_layers=crop_layers,
        )
        params = RoundParams(
            store=existing_store(store).url,
            round=round,
            stage=stage,
            model_version=model_version,
            images=ImageSelection(split=split, max_images=max_images),
            annotator={"ground_truth": ground_truth},
            autogen=autogen,
            filter=stage3,
            confident=confident_filter(
                confident_precision, match_iou=match_iou, precision_confidence=precision_confidence
            ),
            retrain=TrainSettings(steps=retrain_steps) if retrain_steps else None,
            new_model_version=new_model_version,
            calibration=CalibrationSettings(
                ground_truth=ground_truth,
                split=calibration_split,
                points_per_side=points_per_side,
                min_mask_region_area=min_region_area,
                crop_n_layers=crop_layers,
            )
            if (calibrated or confident_precision is not None) and ground_truth
            else None,
            evaluation=EvalSettings(
                ground_truth=ground_truth, filter=stage3 if calibrated else None, autogen=autogen
            )
            if ground_truth
            else None,
        )
        with step_bar() as show, watching(show):
            figures = data_engine_round(params, train_backend=train_backend)
    except (OSError, ValueError, KeyError) as exc:
        fail(exc)
    print_json({k: v for k, v in figures.items() if k != "skipped_images"})


@app.command()
def find(
    phrase: str = typer.Argument(..., metavar="PHRASE", help="what to find, e.g. 'every striped object'"),
    round: int = typer.Option(..., "--round", "-r", min=0, metavar="N", help="round number: one phrase each"),
    model_version: str = MODEL,
    store: str = STORE,
    split: str = typer.Option("train", metavar="SPLIT", help="the images the round works on"),
    max_images: int = typer.Option(None, min=1, metavar="N", help="at most this many images of the split"),
    embed_backend: Backend = typer.Option("ray", help="what embeds the images that have no embedding yet"),
) -> None:
    """A text-prompted fully automatic round: every instance of PHRASE in the store's images, written as round
    N's fully automatic masks (source=auto, the phrase in their phrase column). Needs a text model (-m VERSION
    registered from scripts/train_text.py); one phrase per round."""
    try:  # before Prefect starts: an empty or undecodable phrase needs no model to refuse
        check_phrase(phrase)
        params = FullyAutomaticParams(
            store=existing_store(store).url,
            round=round,
            model_version=model_version,
            images=ImageSelection(split=split, max_images=max_images),
            embed=EmbedSettings(backend=embed_backend),
            text=phrase,
        )
        with step_bar() as show, watching(show):
            figures = fully_automatic(params)
    except (OSError, ValueError, KeyError) as exc:
        fail(exc)
    print_json({k: v for k, v in figures.items() if k != "skipped_images"})


@app.command()
def train(
    parent_version: str = typer.Option("latest", metavar="VERSION", help="weights to start from"),
    model_version: str = typer.Option(
        None, metavar="VERSION", help="new version name (default <parent>-r<round>)"
    ),
    round: int = typer.Option(
        ..., "--round", "-r", min=0, metavar="N", help="train on masks of rounds up to this"
    ),
    steps: int = typer.Option(TrainConfig.steps, min=1, metavar="N", help="training steps"),
    store: str = STORE,
    backend: Backend = typer.Option("ray", help="'ray' (Ray Train) or 'local'"),
    ground_truth: str = typer.Option(
        None, metavar="PATH", help="COCO JSON to evaluate the new version on (optional)"
    ),
) -> None:
    """Retrain on every accepted mask so far and register the new model version."""
    try:
        params = RetrainParams(
            store=existing_store(store).url,
            parent_version=parent_version,
            model_version=model_version,
            round=round,
            train=TrainSettings(steps=steps),
            evaluation=EvalSettings(ground_truth=ground_truth) if ground_truth else None,
        )
        with step_bar() as show, watching(show):
            row = retrain_flow(params, backend=backend)
    except (OSError, ValueError, KeyError) as exc:
        fail(exc)
    print_json(row)


@app.command("eval")
def eval_(
    ground_truth: str = typer.Argument(
        ..., metavar="GROUND_TRUTH", help="COCO JSON with the evaluation images' ground truth"
    ),
    model_version: str = MODEL,
    split: str = typer.Option(
        form_default(EvalSettings, "split"), metavar="SPLIT", help="the held-out images to evaluate on"
    ),
    max_images: int = typer.Option(
        form_default(EvalSettings, "max_images"), min=1, metavar="N", help="at most this many images"
    ),
    store: str = STORE,
) -> None:
    """mIoU after 1..9 clicks, NoC@85/90 and automatic-mask precision/recall of a model version."""
    with on_model_version(store, model_version, "evaluating") as (opened, version, report):
        metrics = evaluate.fn(
            opened.url, version, ground_truth, split=split, max_images=max_images, on_progress=report
        )
    print_json(metrics)


@app.command()
def calibrate(
    ground_truth: str = typer.Argument(
        ..., metavar="GROUND_TRUTH", help="COCO JSON with the calibration images' ground truth"
    ),
    model_version: str = MODEL,
    split: str = typer.Option(
        form_default(CalibrationSettings, "split"),
        metavar="SPLIT",
        help="the labelled images to calibrate on (not train, not test)",
    ),
    max_images: int = typer.Option(
        form_default(CalibrationSettings, "max_images"), min=1, metavar="N", help="at most this many images"
    ),
    points_per_side: int = typer.Option(
        form_default(CalibrationSettings, "points_per_side"),
        min=1,
        metavar="N",
        help="grid density of the candidate masks",
    ),
    min_region_area: int = MIN_REGION_AREA,
    crop_layers: int = CROP_LAYERS,
    target_precision: list[float] = typer.Option(
        [0.8, 0.9], metavar="P", help="print the operating point for these precisions (repeatable)"
    ),
    match_iou: float = fraction(
        form_default(FilterSettings, "match_iou"),
        "IOU",
        "IoU with ground truth at which a mask counts as right",
    ),
    precision_confidence: float = PRECISION_CONFIDENCE,
    store: str = STORE,
) -> None:
    """Score a version's automatic masks against ground truth and store them, so that filters can ask for a
    target precision (FilterSettings.target_precision) instead of fixed thresholds; prints the operating points."""
    with on_model_version(store, model_version, "calibrating") as (opened, version, report):
        settings = CalibrationSettings(
            ground_truth=ground_truth,
            split=split,
            max_images=max_images,
            points_per_side=points_per_side,
            min_mask_region_area=min_region_area,
            crop_n_layers=crop_layers,
        )
        summary = calibrate_task.fn(opened.url, version, settings, on_progress=report)
        table = read_calibration(opened, version, crop_layout(settings))
        # As a stage with the default generator and filter (their NMS and area limits) would apply them.
        summary["precision_confidence"] = precision_confidence
        summary["operating_points"] = {
            str(p): filter_operating_point(
                table,
                AutogenSettings(),
                FilterSettings(
                    target_precision=p, match_iou=match_iou, precision_confidence=precision_confidence
                ),
            )
            for p in target_precision
        }
    print_json(summary)


@app.command("export")
def export_masks(
    format: ExportFormat = typer.Argument(
        ...,
        metavar="FORMAT",
        help="coco: one COCO instances JSON (RLE segmentations); sa1b: one SA-1B JSON file per image",
    ),
    destination: str = typer.Argument(
        ..., metavar="DEST", help="coco: the JSON file; sa1b: the folder (path or URL)"
    ),
    round: int = ONLY_ROUND,
    stage: Stage = ONLY_STAGE,
    store: str = STORE,
) -> None:
    """Export the current masks (superseded and deleted ones left out); prints what was written."""
    url = existing_store(store).url
    try:
        result = export.fn(url, destination, format, round=round, stage=stage)
    except (OSError, ValueError) as exc:
        fail(exc)
    if format == "sa1b":
        result["files"] = len(result["files"])  # one file an image: the count says it, the list would flood
    print_json(result)


@query_app.command("images")
def query_images(store: str = STORE) -> None:
    """Images per split."""
    images = read(existing_store(store).images)
    typer.echo(images.groupby("split").size().to_string() if len(images) else "no images")


@query_app.command("masks")
def query_masks(
    round: int = ONLY_ROUND,
    stage: Stage = ONLY_STAGE,
    source: str = typer.Option(
        None, metavar="SOURCE", help="only masks of this source: auto, model or human"
    ),
    store: str = STORE,
) -> None:
    """Masks per round, stage and source, with mean clicks and seconds per mask."""
    masks = read(existing_store(store).masks, round=round, stage=stage, source=source)
    if masks.empty:
        typer.echo("no masks")
        return
    summary = masks.groupby(["round", "stage", "source"], observed=True).agg(
        masks=("mask_id", "size"),
        images=("image_id", "nunique"),
        clicks=("clicks", "mean"),
        seconds=("seconds", "mean"),
    )
    typer.echo(summary.round(2).to_string())


@query_app.command("models")
def query_models(store: str = STORE) -> None:
    """Registered model versions with their lineage."""
    models = read(existing_store(store).models)
    cols = ["model_version", "parent_version", "trained_on_round", "checkpoint_uri", "created_at"]
    typer.echo(models[cols].to_string(index=False) if len(models) else "no models (only 'embedded')")


@query_app.command("rounds")
def query_rounds(store: str = STORE) -> None:
    """The figures of every round and stage."""
    rounds = read(existing_store(store).rounds)
    if rounds.empty:
        typer.echo("no rounds")
        return
    rows = []
    for r in rounds.itertuples(index=False):
        m = r.metrics or {}
        rows.append(
            {
                "round": r.round,
                "stage": r.stage,
                "images": r.images,
                "masks/img": r.masks_per_image,
                "clicks/mask": m.get("clicks_per_mask"),
                "s/mask": m.get("seconds_per_mask"),
                "mIoU@1": m.get("miou@1"),
                "mIoU@5": m.get("miou@5"),
            }
        )
    import pandas as pd

    typer.echo(pd.DataFrame(rows).round(3).to_string(index=False))


@app.command()
def upgrade(store: str = STORE) -> None:
    """Rewrite a store's masks files of an older schema version in the current one (rows unchanged)."""
    store_obj = existing_store(store)
    try:
        paths = store_obj.upgrade_masks()
    except (OSError, ValueError) as exc:
        fail(exc)
    typer.echo(f"upgraded {len(paths)} masks file(s)" if paths else "every masks file is current")


@model_app.command("add")
def model_add(
    model_version: str = typer.Argument(..., metavar="VERSION", help="name of the version"),
    config: str = typer.Argument(
        ...,
        metavar="CONFIG",
        help="SAM config: vit_b, vit_l, vit_h, tiny, tiny_conv or tiny_conv_slim (a text model: the one it was "
        "trained on, the embedded model's tiny_conv_slim for scripts/train_text.py's)",
    ),
    checkpoint: str = typer.Argument(
        ..., metavar="CHECKPOINT", help="checkpoint path or URL (Meta's sam_vit_*.pth load as they are)"
    ),
    store: str = STORE,
) -> None:
    """Register a checkpoint as a model version, so flows can use it by name; a text model's too (its text
    path is known from the checkpoint when it is loaded)."""
    url = new_store_url(store)
    try:  # every check before the store is opened, so a refused version leaves no folder and no row behind
        check_new_model(model_version, config)
        check_checkpoint(checkpoint, model_version)
        register_model(Store(url), model_version, config, checkpoint)
    except (OSError, ValueError) as exc:
        fail(exc)
    typer.echo(f"registered {model_version} ({config}) from {checkpoint}")


app.command()(segment)


if __name__ == "__main__":
    app()
