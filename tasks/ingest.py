"""Ingest: register image URIs from any fsspec location in the store's images table.

An image's id is the sha256 of its bytes, so the same picture under two names is one image, and re-ingesting a
folder changes nothing. Images that cannot be read or decoded are skipped and returned with the reason; the flow
records them in the round's figures and the round goes on.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field

import fsspec
import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError
from prefect import task

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class IngestResult:
    """What one ingest call did. ``skipped`` holds one {"uri", "reason"} dict per unreadable image."""

    image_ids: list[str] = field(default_factory=list)
    new: int = 0
    skipped: list[dict] = field(default_factory=list)


def expand_uris(uris: list[str]) -> list[str]:
    """Expand folders (recursively, image files only) and glob patterns into a sorted list of file URIs.

    A URI that names nothing is kept as it is, so the read fails and the image is recorded as skipped.
    """
    out: list[str] = []
    for uri in uris:
        fs, path = fsspec.core.url_to_fs(uri)
        if any(ch in path for ch in "*?["):
            matches = [p for p in fs.glob(path) if p.lower().endswith(IMAGE_EXTENSIONS)]
            out.extend(fs.unstrip_protocol(p) for p in sorted(matches))
        elif fs.isdir(path):
            found = [p for p in fs.find(path) if p.lower().endswith(IMAGE_EXTENSIONS)]
            out.extend(fs.unstrip_protocol(p) for p in sorted(found))
        else:
            out.append(uri if "://" in uri else fs.unstrip_protocol(path))
    return list(dict.fromkeys(out))


def read_image_bytes(uri: str) -> bytes:
    """The raw bytes behind ``uri`` (any fsspec URL or plain path)."""
    with fsspec.open(uri, "rb") as f:
        return f.read()


def decode_image(data: bytes, uri: str = "<bytes>") -> np.ndarray:
    """Decode image bytes to HxWx3 uint8 RGB. Raises ValueError naming ``uri`` when they are not an image."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # decodes every pixel: a truncated file fails here, not later in the encoder
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"cannot decode image {uri}: {exc}") from exc
    return np.asarray(rgb, dtype=np.uint8)


def load_image(uri: str) -> np.ndarray:
    """Read and decode the image at ``uri`` as HxWx3 uint8 RGB."""
    return decode_image(read_image_bytes(uri), uri)


def inspect_image(uri: str) -> dict:
    """One images-table row for ``uri``: image_id (= sha256), uri, width, height, sha256. Raises on bad input."""
    data = read_image_bytes(uri)
    if not data:
        raise ValueError(f"empty file {uri}")
    pixels = decode_image(data, uri)
    digest = hashlib.sha256(data).hexdigest()
    height, width = pixels.shape[:2]
    return {"image_id": digest, "uri": uri, "width": int(width), "height": int(height), "sha256": digest}


@task(name="ingest", retries=2, retry_delay_seconds=2)
def ingest(store_url: str, uris: list[str], split: str = "train") -> IngestResult:
    """Register every readable image under ``uris`` (files, folders or globs) with ``split``.

    Idempotent: images already in the store keep their row (and their split).
    """
    from stores import Store

    if not split:
        raise ValueError("split must be a non-empty name such as 'train', 'val' or 'test'")
    store = Store(store_url)
    result = IngestResult()
    rows: dict[str, dict] = {}
    for uri in expand_uris(uris):
        try:
            row = inspect_image(uri)
        except (OSError, ValueError) as exc:
            result.skipped.append({"uri": uri, "reason": str(exc) or type(exc).__name__})
            continue
        rows.setdefault(row["image_id"], {**row, "split": split})
    known = set(store.images()["image_id"]) if rows else set()
    fresh = [r for image_id, r in rows.items() if image_id not in known]
    if fresh:
        store.write_images(pd.DataFrame(fresh))
    result.image_ids = sorted(rows)
    result.new = len(fresh)
    return result
