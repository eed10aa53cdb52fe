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


def run_shard(
    store,
    *,
    round: int,
    stage: str,
    shard: str,
    image_ids: list[str],
    model_version: str,
    settings: dict,
    per_image,
    on_progress: OnProgress | None = None,
) -> dict:
    """Run ``per_image(image_row) -> DataFrame of mask rows`` over a shard, write the rows as one atomic shard,
    and mark the shard done. A shard already done with the same fingerprint is skipped (its summary returned).
    ``on_progress(images done, images of the shard)`` is called after each image (at once for a skipped shard).

    ``per_image`` may raise ValueError/KeyError/OSError for one image: the image is recorded in the summary's
    ``skipped`` list with the reason, and the shard goes on. Returns {"shard", "images", "masks", "skipped",
    "resumed"}.
    """
    import pandas as pd

    print_ = fingerprint(image_ids, model_version, settings)
    done = shard_done(store, round, stage, shard, print_)
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
    store.write_masks(masks, round=round, stage=stage, shard=shard)
    summary = {
        "shard": shard,
        "images": len(image_ids) - len(skipped),
        "masks": len(masks),
        "skipped": skipped,
    }
    mark_done(store, round, stage, shard, print_, summary)
    return {**summary, "resumed": False}
