"""Export: the store's current masks as COCO instances JSON or SA-1B per-image JSON files.

Thin wrappers over ``stores.coco.export_coco`` and ``stores.sa1b.export_sa1b`` so that exports run (and are
retried and logged) as Prefect tasks. Both honour supersession: a human edit replaces the mask it supersedes.
"""

from __future__ import annotations

from typing import Literal

from prefect import task

from stores import Store
from stores.coco import export_coco
from stores.sa1b import export_sa1b

ExportFormat = Literal["coco", "sa1b"]  # the formats `export` writes, and the CLI offers


@task(name="export", retries=1, retry_delay_seconds=2)
def export(
    store_url: str,
    destination: str,
    format: ExportFormat = "coco",
    round: int | None = None,
    stage: str | None = None,
) -> dict:
    """Write the masks (all rounds, or one round / stage) to ``destination``.

    coco: destination is the JSON file (path or URL). sa1b: destination is a directory, one JSON per image.
    Returns {"format", "destination", "images", "masks", "files"}.
    """
    store = Store(store_url)
    if format == "coco":
        data = export_coco(store, destination, round=round, stage=stage)
        return {
            "format": "coco",
            "destination": destination,
            "images": len(data["images"]),
            "masks": len(data["annotations"]),
            "files": [destination],
        }
    if format == "sa1b":
        paths = export_sa1b(store, destination, round=round, stage=stage)
        masks = store.masks(round=round, stage=stage)
        return {
            "format": "sa1b",
            "destination": destination,
            "images": len(paths),
            "masks": len(masks),
            "files": paths,
        }
    raise ValueError(f"format must be 'coco' or 'sa1b', got {format!r}")
