"""`sam-engine segment`: the masks of one image, drawn over it, without a store write.

    sam-engine segment IMAGE --out PNG       automatic masks (a grid of point prompts, the paper's thresholds)
    sam-engine segment IMAGE --text PHRASE   the masks a phrase names (the embedded model's shipped text path, or a
                                             text model of scripts/train_text.py)

The embedded model needs no store; any other comes from the store by -m VERSION, or, for a text model, from an
unregistered checkpoint (--checkpoint).
"""

from __future__ import annotations

from pathlib import Path

import typer
from PIL import Image

from flows.cli_common import (
    MODEL,
    POINTS_PER_SIDE,
    PRED_IOU_THRESH,
    STABILITY_THRESH,
    STORE,
    existing_store,
    fail,
    store_url,
)
from flows.progress import progress_bar
from sam_core import SamPredictor
from sam_core.text_encoder import check_phrase
from sam_core.text_instances import PRESENCE_THRESHOLD, segment_phrase
from stores import Store, StoreNotFoundError
from tasks.autogen import AutogenSettings, make_generator
from tasks.ingest import load_image
from tasks.models import (
    EMBEDDED_VERSION,
    LATEST,
    check_checkpoint,
    load_model,
    load_text_checkpoint,
    load_text_model,
    resolve_version,
)
from tasks.overlays import overlay


def segment(
    image: str = typer.Argument(..., metavar="IMAGE", help="image file or URL"),
    out: Path = typer.Option(Path("segment.png"), metavar="PATH", help="overlay PNG to write"),
    model_version: str = MODEL,
    points_per_side: int = POINTS_PER_SIDE,
    pred_iou_thresh: float = PRED_IOU_THRESH,
    stability_thresh: float = STABILITY_THRESH,
    text: str = typer.Option(
        None,
        metavar="PHRASE",
        help="the masks this phrase names instead of automatic masks ('every ...': each instance); the embedded "
        "model answers with its shipped text path, or name a text model (-m VERSION, --checkpoint)",
    ),
    checkpoint: str = typer.Option(
        None, metavar="PATH", help="with --text: an unregistered text checkpoint (path or URL) instead of -m"
    ),
    clip_checkpoint: str = typer.Option(
        None,
        metavar="PATH",
        help="with --text and a CLIP text model: its open_clip weights file here (default: the file it was "
        "trained with)",
    ),
    store: str = STORE,
) -> None:
    """Automatic masks of one image, drawn over it (no store writes; the embedded model by default); with
    --text, the masks of a phrase and its presence score."""
    if checkpoint is not None and text is None:
        fail(
            ValueError("--checkpoint is for a text model and needs --text; a plain checkpoint segments by -m")
        )
    if clip_checkpoint is not None and text is None:
        fail(ValueError("--clip-checkpoint is for a CLIP text model and needs --text"))
    if checkpoint is not None and model_version != EMBEDDED_VERSION:
        fail(ValueError("give -m VERSION or --checkpoint, not both"))
    # Before any model runs: PIL picks the format by the name's ending, and would refuse only after the masks.
    if out.suffix.lower() not in Image.registered_extensions():
        fail(ValueError(f"--out {out}: not an image file name PIL can write (end it in .png or .jpg)"))
    if text is not None:
        try:  # before any model is loaded: an empty or undecodable phrase needs no model to refuse
            check_phrase(text)
        except ValueError as exc:
            fail(exc)
    store_obj = None
    if checkpoint is None:
        store_obj = _segment_store(store, model_version)
    try:
        pixels = load_image(image)
        version = resolve_version(store_obj, model_version) if store_obj else EMBEDDED_VERSION
        if text is not None:
            _segment_text(pixels, text, out, store_obj, version, checkpoint, clip_checkpoint)
            return
        model = load_model(store_obj, version)
        settings = AutogenSettings(
            points_per_side=points_per_side,
            pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_thresh,
        )
        generator = make_generator(model, settings)
        generator.output_mode = "binary_mask"
        with progress_bar(f"segmenting {image.rsplit('/', 1)[-1]}: grid points") as report:
            records = generator.generate(pixels, on_progress=report)
    except (OSError, ValueError, KeyError) as exc:
        fail(exc)
    overlay(pixels, [r["segmentation"] for r in records]).save(out)
    typer.echo(f"{len(records)} masks -> {out}")
    if not records:  # never an empty result in silence
        typer.echo(
            generator.funnel.why_empty(generator.pred_iou_thresh, generator.stability_score_thresh), err=True
        )


def _segment_store(store: str | None, model_version: str):
    """segment's store: --store must exist; the default one may be missing when the shipped model is asked for
    (None then: a first try should not make a store)."""
    if store is not None:
        return existing_store(store)
    try:
        return Store(store_url(None), create=False)
    except (OSError, ValueError) as exc:
        if not isinstance(exc, StoreNotFoundError) or model_version not in (EMBEDDED_VERSION, LATEST):
            fail(exc)
    return None


def _segment_text(
    pixels, text: str, out: Path, store_obj, version: str, checkpoint: str | None, clip_checkpoint: str | None
) -> None:
    """segment --text: the phrase's masks (sam_core.text_instances.segment_phrase) as an overlay, the presence
    score and each mask printed; an empty answer says why on stderr. Bad input raises ValueError / OSError."""
    if checkpoint is not None:
        check_checkpoint(checkpoint, Path(checkpoint).stem)
        model, text_encoder = load_text_checkpoint(checkpoint, clip_checkpoint=clip_checkpoint)
    else:  # embedded needs no store (its text path ships beside it)
        model, text_encoder = load_text_model(store_obj, version, clip_checkpoint=clip_checkpoint)
    text_encoder.tokenize([check_phrase(text, text_encoder.name)])  # its words and length, before any compute
    predictor = SamPredictor(model, text_encoder=text_encoder)
    predictor.set_image(pixels)
    found = segment_phrase(predictor, text)
    overlay(pixels, found.masks).save(out)
    verdict = "present" if found.present else "absent"
    typer.echo(
        f"presence {found.presence:.3f}: {found.phrase!r} judged {verdict} (threshold {PRESENCE_THRESHOLD})"
    )
    noun = "instance" if found.instances and found.masks else "mask"
    typer.echo(f"{len(found.masks)} {noun}{'' if len(found.masks) == 1 else 's'} -> {out}")
    for i, (mask, score) in enumerate(zip(found.masks, found.scores, strict=True), 1):
        typer.echo(f"  {i}: {int(mask.sum())} px, predicted IoU {score:.3f}")
    if found.why_empty:  # never an empty result in silence
        typer.echo(found.why_empty, err=True)
