"""Shards: the unit of work and of writing for the per-image stage tasks.

Images are sorted by id and cut into fixed-size shards; a shard's masks are written in one atomic file named by
(round, stage, shard index), so a retried or rerun shard replaces its own output. When a shard is written, a small
"done" record (the image ids, the model version and the settings that produced it) goes to the store's state
table; a rerun skips shards whose record matches, which is what lets a run killed in the middle resume where it
stopped and still end with exactly the masks of an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import NotRequired, TypedDict

from tasks.progress import OnProgress
from tasks.records import MASK_COLUMNS

STATE_TABLE = "stage_shards"


def plan_shards(image_ids: list[str], shard_size: int) -> list[list[str]]:
    """Sorted ids cut into consecutive shards of ``shard_size`` (the last may be shorter)."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    ids = sorted(set(image_ids))
    return [ids[i : i + shard_size] for i in range(0, len(ids), shard_size)]


def shard_name(index: int) -> str:
    return f"{index:05d}"


def fingerprint(image_ids: list[str], model_version: str, settings: dict) -> str:
    """What determines a shard's output: its images, the model and the settings (JSON, sorted keys)."""
    blob = json.dumps(
        {"ids": sorted(image_ids), "model": model_version, "settings": settings}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _key(round: int, stage: str, shard: str) -> str:
    return f"{round}/{stage}/{shard}"


def shard_done(store, round: int, stage: str, shard: str, print_: str) -> dict | None:
    """The done record of a shard if it was written with the same fingerprint, else None."""
    row = store.read_state(STATE_TABLE, _key(round, stage, shard))
    return row if row and row.get("fingerprint") == print_ else None


def mark_done(store, round: int, stage: str, shard: str, print_: str, summary: dict) -> None:
    store.write_state(STATE_TABLE, _key(round, stage, shard), {"fingerprint": print_, **summary})


class ShardSummary(TypedDict):
    """What a shard's run returns: its name, the images it did, the masks it wrote, the images it skipped (each
    with its reason), and whether an earlier run had already written the shard; a text-prompted shard
    (tasks.text_autogen) adds the images where its phrase was judged absent, each with its presence score."""

    shard: str
    images: int
    masks: int
    skipped: list[dict]
    resumed: bool
    absent: NotRequired[list[dict]]


@dataclass(frozen=True)
class Shard:
    """One shard of a stage's images, all a shard task needs to know of where it works: the store, the model
    version, the round and stage its masks belong to, its name (``shard_name``: the file
    ``masks/round=R/stage=S/shard-<name>.parquet``) and its images."""

    store_url: str
    model_version: str
    round: int
    stage: str
    name: str
    image_ids: tuple[str, ...]


def run_shard(
    store,
    shard: Shard,
    settings: dict,
    per_image,
    on_progress: OnProgress | None = None,
    notes: dict | None = None,
) -> ShardSummary:
    """Run ``per_image(image_id, image_row) -> DataFrame of mask rows`` over the shard's images, write the rows as
    one atomic shard, and mark the shard done. A shard already done with the same fingerprint (its images, the
    model and ``settings``) is skipped (its summary returned). ``on_progress(images done, images of the shard)``
    is called after each image (at once for a skipped shard).

    ``per_image`` may raise ValueError/KeyError/OSError for one image: the image is recorded in the summary's
    ``skipped`` list with the reason, and the shard goes on. ``notes``: what ``per_image`` records on the way
    beside the rows (JSON-able, e.g. the images a phrase is absent from), added to the summary and kept in the
    done record, so that a resumed shard says the same.
    """
    import pandas as pd

    round, stage, image_ids = shard.round, shard.stage, list(shard.image_ids)
    print_ = fingerprint(image_ids, shard.model_version, settings)
    done = shard_done(store, round, stage, shard.name, print_)
    report = on_progress or (lambda done, total: None)
    if done is not None:
        report(len(image_ids), len(image_ids))
        return {**done, "resumed": True}
    images = store.images().set_index("image_id")
    frames, skipped = [], []
    for count, image_id in enumerate(image_ids, start=1):
        row = images.loc[image_id]
        try:
            frames.append(per_image(image_id, row))
        except (ValueError, KeyError, OSError) as exc:
            skipped.append(
                {"image_id": image_id, "uri": row["uri"], "reason": str(exc) or type(exc).__name__}
            )
        report(count, len(image_ids))
    rows = [f for f in frames if len(f)]
    masks = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=MASK_COLUMNS)
    # An empty shard is written too: it replaces what an earlier run of this shard may have left.
    store.write_masks(masks, round=round, stage=stage, shard=shard.name)
    summary = {
        "shard": shard.name,
        "images": len(image_ids) - len(skipped),
        "masks": len(masks),
        "skipped": skipped,
        **(notes or {}),
    }
    mark_done(store, round, stage, shard.name, print_, summary)
    return {**summary, "resumed": False}
