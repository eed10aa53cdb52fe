"""The figures of a stage run, read back from the store, and the artifacts that show them in the Prefect UI.

Figures (one dict per round and stage): images, masks, masks_per_image, masks by source, clicks_per_mask and
seconds_per_mask (means over the annotator's masks), the images skipped with their reasons, and, once evaluated,
the held-out metrics (miou@k, noc@85/90, amg precision/recall).
"""

from __future__ import annotations

import math

from prefect import task

from stores import Store
from tasks.ingest import load_image
from tasks.overlays import overlay, png_data_uri
from tasks.records import decode_rows

FIGURE_COLUMNS = (
    "round",
    "stage",
    "model_version",
    "images",
    "masks",
    "masks_per_image",
    "clicks_per_mask",
    "seconds_per_mask",
    "miou@1",
    "miou@5",
    "amg_precision",
    "amg_recall",
    "skipped",
)


def stage_figures(store, round: int, stage: str, summaries: list[dict], model_version: str) -> dict:
    """Figures of (round, stage) from its masks in the store and the shard summaries of this run."""
    masks = store.masks(round=round, stage=stage)
    skipped = [s for summary in summaries for s in summary.get("skipped", [])]
    images = sum(int(s.get("images", 0)) for s in summaries)
    human = masks[masks["source"] == "human"]
    by_source = {str(k): int(v) for k, v in masks["source"].value_counts().items()}
    return {
        "round": int(round),
        "stage": stage,
        "model_version": model_version,
        "images": images,
        "masks": len(masks),
        "masks_per_image": round_or_none(len(masks) / images if images else None),
        "masks_by_source": by_source,
        "clicks_per_mask": round_or_none(human["clicks"].mean() if len(human) else None),
        "seconds_per_mask": round_or_none(human["seconds"].mean() if len(human) else None),
        "skipped": len(skipped),
        "skipped_images": skipped,
        **_absent_figures(summaries),
    }


def _absent_figures(summaries: list[dict]) -> dict:
    """A text-prompted stage's images where the phrase was judged absent (tasks.text_autogen); nothing for a
    stage without a phrase, whose figures stay as they were."""
    if not any("absent" in summary for summary in summaries):
        return {}
    absent = [a for summary in summaries for a in summary.get("absent", [])]
    return {"absent": len(absent), "absent_images": absent}


def round_or_none(value, digits: int = 4):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return round(float(value), digits)


@task(name="record-round")
def record_round(store_url: str, figures: dict, started_at, finished_at) -> None:
    """Write the figures as the rounds-table row of (round, stage); a rerun replaces it."""
    core = ("round", "stage", "images", "masks", "masks_per_image")
    Store(store_url).write_round(
        {
            "round": int(figures["round"]),
            "stage": figures["stage"],
            "started_at": started_at,
            "finished_at": finished_at,
            "images": int(figures["images"]),
            "masks": int(figures["masks"]),
            "masks_per_image": figures["masks_per_image"],
            "metrics": {k: v for k, v in figures.items() if k not in core},
        }
    )


def figures_table(figures: list[dict]) -> list[dict]:
    """Rows of the figures table (one per round/stage), with the columns of FIGURE_COLUMNS."""
    return [{c: f.get(c) for c in FIGURE_COLUMNS} for f in figures]


@task(name="publish-report")
def publish_report(store_url: str, figures: dict, overlay_images: int = 3) -> str:
    """Prefect artifacts of a stage run: a table of its figures and a markdown report with mask overlays.

    Returns the markdown. Outside a flow run the artifacts are skipped (the markdown is still returned).
    """
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    markdown = stage_markdown(store_url, figures, overlay_images)
    key = f"round-{figures['round']}-{figures['stage'].replace('_', '-')}"
    create_table_artifact(
        key=f"{key}-figures", table=figures_table([figures]), description=f"figures of {key}"
    )
    create_markdown_artifact(key=f"{key}-report", markdown=markdown, description=f"report of {key}")
    return markdown


def stage_markdown(store_url: str, figures: dict, overlay_images: int = 3) -> str:
    """A short markdown report: the figures, skipped images with reasons, and a few overlays (data URIs)."""
    lines = [f"# Round {figures['round']}: {figures['stage'].replace('_', ' ')}", ""]
    lines += ["| figure | value |", "|---|---|"]
    for name in FIGURE_COLUMNS[2:]:
        if figures.get(name) is not None:
            lines.append(f"| {name} | {figures[name]} |")
    if figures.get("masks_by_source"):
        lines.append(f"| masks by source | {figures['masks_by_source']} |")
    if figures.get("retrain_skipped"):
        lines += ["", f"**Retrain skipped**: {figures['retrain_skipped']}"]
    if figures.get("skipped_images"):
        lines += ["", "## Skipped images", ""]
        lines += [f"- `{s['uri']}`: {s['reason']}" for s in figures["skipped_images"][:20]]
    store = Store(store_url)
    masks = store.masks(round=figures["round"], stage=figures["stage"])
    if len(masks) and overlay_images:
        lines += ["", "## Overlays", ""]
        images = store.images().set_index("image_id")
        for image_id in sorted(masks["image_id"].unique())[:overlay_images]:
            rows = masks[masks["image_id"] == image_id]
            try:
                picture = overlay(load_image(images.loc[image_id, "uri"]), decode_rows(rows))
            except (OSError, ValueError, KeyError):
                continue
            lines.append(f"![{image_id[:12]}: {len(rows)} masks]({png_data_uri(picture)})")
    return "\n".join(lines) + "\n"
