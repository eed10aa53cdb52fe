"""Ingest: register image URIs from any fsspec location in the store's images table.

An image's id is the sha256 of its bytes, so the same picture under two names is one image, and re-ingesting a
folder changes nothing. Images that cannot be read or decoded are skipped and returned with the reason; the flow
records them in the round's figures and the round goes on.
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from dataclasses import dataclass, field

import fsspec
import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError
from prefect import task

from stores import Store
from stores.fsio import url_to_fs
from tasks.progress import CACHE_POLICY, OnProgress

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# Why a file was skipped, in words a user can act on; ingest's callers count skipped files by these.
NOT_AN_IMAGE = "not an image PIL can read"
DAMAGED = "truncated or damaged image"
TOO_LARGE = "too many pixels (PIL's decompression-bomb limit)"
EMPTY_FILE = "empty file"
NO_SUCH_FILE = "no such file or folder"
NO_PERMISSION = "permission denied"
UNREADABLE = "cannot read the file"


class UnreadableImageError(ValueError):
    """A file that is not a usable image. ``reason`` is one of the words above; the message names the file."""

    def __init__(self, uri: str, reason: str, detail: str = ""):
        self.uri, self.reason, self.detail = uri, reason, detail
        super().__init__(f"{uri}: {reason}" + (f" ({detail})" if detail else ""))


@dataclass
class IngestResult:
    """What one ingest call did.

    ``skipped`` holds one {"uri", "reason", "detail"} dict per file that was not registered (reason: one of the
    words above); ``unmatched`` one {"uri", "reason"} dict per folder or glob that named no image file;
    ``ignored`` counts the other files (not ending in an image extension) of the folders and globs that did
    name image files.
    """

    image_ids: list[str] = field(default_factory=list)
    new: int = 0
    skipped: list[dict] = field(default_factory=list)
    unmatched: list[dict] = field(default_factory=list)
    ignored: int = 0

    def skipped_by_reason(self) -> dict[str, int]:
        """{reason: how many files}, the most frequent first."""
        return dict(Counter(s["reason"] for s in self.skipped).most_common())


def _is_image_name(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def expand_uri(uri: str) -> tuple[list[str], int, str | None]:
    """(image file URIs, count of other files, why nothing matched or None) for one file, folder or glob.

    Folders are searched recursively and, like globs, yield only files with an image extension. A URI that is
    neither a folder nor a glob is returned as it is (whatever its extension), so a missing or unreadable file
    is reported when it is read. UnknownProtocolError (a ValueError) for a protocol fsspec does not know.
    """
    fs, path = url_to_fs(uri)
    if any(ch in path for ch in "*?["):
        matches = sorted(p for p, info in fs.glob(path, detail=True).items() if info["type"] != "directory")
        what = f"{uri} matches"
    elif fs.isdir(path):
        matches = sorted(fs.find(path))
        what = f"folder {uri} holds"
    else:
        return [uri if "://" in uri else fs.unstrip_protocol(path)], 0, None
    images = [fs.unstrip_protocol(p) for p in matches if _is_image_name(p)]
    others = len(matches) - len(images)
    if images:
        return images, others, None
    if not matches:
        return [], 0, f"{what} no files"
    files = "1 file" if others == 1 else f"{others} files"
    return [], others, f"{what} {files}, none ending in {', '.join(IMAGE_EXTENSIONS)}"


def expand_uris(uris: list[str]) -> list[str]:
    """Expand folders (recursively, image files only) and glob patterns into a sorted list of file URIs."""
    out: list[str] = []
    for uri in uris:
        out.extend(expand_uri(uri)[0])
    return list(dict.fromkeys(out))


def read_image_bytes(uri: str) -> bytes:
    """The raw bytes behind ``uri`` (any fsspec URL or plain path). UnreadableImageError (a ValueError) with the
    reason when the file is missing, not readable or empty."""
    try:
        with fsspec.open(uri, "rb") as f:
            data = f.read()
    except FileNotFoundError as exc:
        raise UnreadableImageError(uri, NO_SUCH_FILE) from exc
    except PermissionError as exc:
        raise UnreadableImageError(uri, NO_PERMISSION) from exc
    except OSError as exc:
        raise UnreadableImageError(uri, UNREADABLE, str(exc) or type(exc).__name__) from exc
    if not data:
        raise UnreadableImageError(uri, EMPTY_FILE)
    return data


def decode_image(data: bytes, uri: str = "<bytes>") -> np.ndarray:
    """Decode image bytes to HxWx3 uint8 RGB. UnreadableImageError naming ``uri`` when they are not an image."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # decodes every pixel: a truncated file fails here, not later in the encoder
            rgb = img.convert("RGB")
    except UnidentifiedImageError as exc:  # its message names a BytesIO object, not the file: leave it out
        raise UnreadableImageError(uri, NOT_AN_IMAGE) from exc
    except Image.DecompressionBombError as exc:
        raise UnreadableImageError(uri, TOO_LARGE, str(exc)) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise UnreadableImageError(uri, DAMAGED, str(exc)) from exc
    return np.asarray(rgb, dtype=np.uint8)


def load_image(uri: str) -> np.ndarray:
    """Read and decode the image at ``uri`` as HxWx3 uint8 RGB."""
    return decode_image(read_image_bytes(uri), uri)


def inspect_image(uri: str) -> dict:
    """One images-table row for ``uri``: image_id (= sha256), uri, width, height, sha256.

    UnreadableImageError (a ValueError) with the reason when the file is missing, unreadable or not an image.
    """
    data = read_image_bytes(uri)
    pixels = decode_image(data, uri)
    digest = hashlib.sha256(data).hexdigest()
    height, width = pixels.shape[:2]
    return {"image_id": digest, "uri": uri, "width": int(width), "height": int(height), "sha256": digest}


@task(name="ingest", retries=2, retry_delay_seconds=2, cache_policy=CACHE_POLICY)
def ingest(
    store_url: str,
    uris: list[str],
    split: str = "train",
    on_progress: OnProgress | None = None,
) -> IngestResult:
    """Register every readable image under ``uris`` (files, folders or globs) with ``split``.

    ``on_progress(files read, files found)`` is called after each file (the CLI's progress bar).

    Idempotent: images already in the store keep their row (and their split). When nothing readable is found the
    store is not opened, so a mistyped path leaves no store folder behind.
    """
    if not split:
        raise ValueError("split must be a non-empty name such as 'train', 'val' or 'test'")
    result = IngestResult()
    files: list[str] = []
    for uri in uris:
        found, others, why_none = expand_uri(uri)
        files.extend(found)
        if why_none is not None:  # its reason already counts the other files
            result.unmatched.append({"uri": uri, "reason": why_none})
        else:
            result.ignored += others
    rows: dict[str, dict] = {}
    unique = list(dict.fromkeys(files))
    for done, uri in enumerate(unique, start=1):
        if on_progress is not None:
            on_progress(done - 1, len(unique))
        try:
            row = inspect_image(uri)
        except (OSError, ValueError) as exc:
            if isinstance(exc, UnreadableImageError):
                reason, detail = exc.reason, exc.detail
            else:  # a filesystem's own error (a bad URL, a network failure): the file is skipped all the same
                reason, detail = UNREADABLE, str(exc) or type(exc).__name__
            result.skipped.append({"uri": uri, "reason": reason, "detail": detail})
            continue
        rows.setdefault(row["image_id"], {**row, "split": split})
    if on_progress is not None:
        on_progress(len(unique), len(unique))
    if not rows:
        return result
    store = Store(store_url)
    known = set(store.images()["image_id"])
    fresh = [r for image_id, r in rows.items() if image_id not in known]
    if fresh:
        store.write_images(pd.DataFrame(fresh))
    result.image_ids = sorted(rows)
    result.new = len(fresh)
    return result
