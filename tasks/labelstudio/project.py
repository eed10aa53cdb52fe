"""Set up a Label Studio project from the engine: the interactive SAM labeling config, tasks, predictions.

Each task is one image: `data = {"image": <url Label Studio can load>, "image_id": <engine image id>}`. The ML
backend and the sync find the engine's image by `image_id`, never by parsing URLs. Model masks ride along as one
prediction per task (brush RLE results with the model's score and model_version), so the annotator starts from them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote, urlparse
from xml.etree import ElementTree
from xml.sax.saxutils import quoteattr

import numpy as np
import pandas as pd

from .client import LabelStudioClient
from .convert import coco_rle_to_mask, mask_to_brush_rle

IMAGE_NAME = "image"
BRUSH_NAME = "mask"
KEYPOINT_NAME = "click"
RECT_NAME = "box"
TEXT_NAME = "prompt"
# where the ML backend says why a phrase got no mask (absent, or nothing it could find)
NOTE_NAME = "sam_says"
DEFAULT_LABELS = ("object",)
TEXT_PLACEHOLDER = "a phrase (needs a text model), e.g. every striped object"
NOTE_PLACEHOLDER = "why a phrase found nothing, when it does"


def label_config(labels: Iterable[str] = DEFAULT_LABELS) -> str:
    """The labeling config: brush masks, plus keypoints and rectangles marked smart so each click or box goes to
    the ML backend (interactive SAM), and a text box whose phrase the backend answers with the masks it names
    (a text model; with auto-annotation on, Label Studio sends the phrase when it is added), and a second box
    where the backend says why a phrase got no mask (a phrase judged absent would otherwise leave the image as it
    was, without a word). Point, box and text prompts are not stored as annotations the engine syncs; only brush
    results are masks."""
    labels = list(labels)
    if not labels:
        raise ValueError("labels must name at least one label")
    items = "".join(f"<Label value={quoteattr(str(label))}/>" for label in labels)
    smart = "".join(f'<Label value={quoteattr(str(label))} smart="true"/>' for label in labels)
    return (
        "<View>"
        f'<Image name="{IMAGE_NAME}" value="$image" zoom="true" zoomControl="true"/>'
        f'<BrushLabels name="{BRUSH_NAME}" toName="{IMAGE_NAME}">{items}</BrushLabels>'
        f'<KeyPointLabels name="{KEYPOINT_NAME}" toName="{IMAGE_NAME}" smart="true">{smart}</KeyPointLabels>'
        f'<RectangleLabels name="{RECT_NAME}" toName="{IMAGE_NAME}" smart="true">{smart}</RectangleLabels>'
        # One phrase at a time (maxSubmissions 1), editable to ask the next one.
        f'<TextArea name="{TEXT_NAME}" toName="{IMAGE_NAME}" editable="true" rows="1" maxSubmissions="1" '
        f'showSubmitButton="true" placeholder={quoteattr(TEXT_PLACEHOLDER)}/>'
        f'<TextArea name="{NOTE_NAME}" toName="{IMAGE_NAME}" editable="false" rows="1" '
        f"placeholder={quoteattr(NOTE_PLACEHOLDER)}/>"
        "</View>"
    )


def brush_label(config: str | None) -> str:
    """The first brush label of a labeling config (what a text answer's masks are labelled with: a phrase picks
    no label); DEFAULT_LABELS[0] when the config is missing, unreadable or has none."""
    try:
        label = ElementTree.fromstring(config or "").find(".//BrushLabels/Label")
    except ElementTree.ParseError:
        label = None
    return label.get("value", DEFAULT_LABELS[0]) if label is not None else DEFAULT_LABELS[0]


def has_note_box(config: str | None) -> bool:
    """Whether a labeling config has the box where the backend says why a phrase found nothing (NOTE_NAME):
    projects made before it was added have none, and Label Studio refuses a result for a control it lacks."""
    try:
        root = ElementTree.fromstring(config or "")
    except ElementTree.ParseError:
        return False
    return any(box.get("name") == NOTE_NAME for box in root.iter("TextArea"))


def image_url(uri: str, document_root: str | Path | None = None) -> str:
    """The URL Label Studio loads an image from.

    A local file (plain path or file://) under document_root becomes `/data/local-files/?d=<relative path>`
    (Label Studio's local file serving); http(s) URLs pass through; anything else is refused with the reason.
    """
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        return uri
    if parsed.scheme in ("", "file"):
        path = Path(parsed.path if parsed.scheme == "file" else uri).resolve()
        if document_root is None:
            raise ValueError(f"image {uri!r} is a local file: pass the server's document_root to serve it")
        root = Path(document_root).resolve()
        try:
            rel = path.relative_to(root)
        except ValueError as exc:
            raise ValueError(
                f"image {uri!r} lies outside Label Studio's document root {str(root)!r}"
            ) from exc
        return f"/data/local-files/?d={quote(rel.as_posix())}"
    raise ValueError(
        f"image {uri!r}: Label Studio cannot load {parsed.scheme}:// URIs directly; copy it locally"
    )


def brush_result(
    mask: np.ndarray, label: str = DEFAULT_LABELS[0], result_id: str | None = None, score: float | None = None
) -> dict:
    """One brushlabels result for a bool mask (H x W), as Label Studio stores it."""
    height, width = mask.shape
    result = {
        "id": result_id or uuid.uuid4().hex[:10],
        "type": "brushlabels",
        "from_name": BRUSH_NAME,
        "to_name": IMAGE_NAME,
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "value": {"format": "rle", "rle": mask_to_brush_rle(mask), "brushlabels": [label]},
    }
    if score is not None:
        result["score"] = float(score)
    return result


def prediction_from_masks(masks: pd.DataFrame, model_version: str, label: str = DEFAULT_LABELS[0]) -> dict:
    """One Label Studio prediction from one image's mask rows (counts, height, width, predicted_iou, mask_id)."""
    results = []
    scores = []
    for row in masks.itertuples(index=False):
        mask = coco_rle_to_mask(row.counts, int(row.height), int(row.width))
        iou = getattr(row, "predicted_iou", None)
        score = None if iou is None or pd.isna(iou) else float(iou)
        if score is not None:
            scores.append(score)
        # The result id carries the engine's mask_id, so an accepted prediction can be traced to its source mask.
        results.append(brush_result(mask, label, result_id=str(row.mask_id)[:32], score=score))
    return {
        "model_version": model_version,
        "score": float(np.mean(scores)) if scores else 0.0,
        "result": results,
    }


def ensure_project(client: LabelStudioClient, title: str, labels: Iterable[str] = DEFAULT_LABELS) -> int:
    """The id of the project with this title, created with the SAM labeling config if missing (idempotent)."""
    existing = client.find_project(title)
    if existing is not None:
        return int(existing["id"])
    return int(client.create_project(title, label_config(labels))["id"])


def ensure_ml_backend(client: LabelStudioClient, project_id: int, url: str, token: str | None = None) -> int:
    """The id of the project's ML backend at ``url``, connected when missing (Label Studio calls its /health and
    /setup then, so the backend must be up). Idempotent."""
    for backend in client.get("/api/ml", project=int(project_id)) or []:
        if str(backend.get("url", "")).rstrip("/") == url.rstrip("/"):
            return int(backend["id"])
    return int(client.add_ml_backend(project_id, url, token=token)["id"])


def ensure_local_storage(client: LabelStudioClient, project_id: int, folder: str | Path) -> None:
    """Give the project a local-files storage over folder (no import), which Label Studio requires before it
    serves `/data/local-files/?d=...` files from there. Idempotent."""
    folder = str(Path(folder).resolve())
    for storage in client.get("/api/storages/localfiles", project=int(project_id)) or []:
        if folder == storage.get("path") or folder.startswith(str(storage.get("path", "")).rstrip("/") + "/"):
            return
    client.post(
        "/api/storages/localfiles",
        {"project": int(project_id), "path": folder, "title": "engine images", "use_blob_urls": True},
    )


def existing_tasks(client: LabelStudioClient, project_id: int) -> dict[str, int]:
    """image_id -> task id for the project's tasks that carry an engine image_id."""
    out: dict[str, int] = {}
    for task in client.iter_tasks(project_id):
        image_id = (task.get("data") or {}).get("image_id")
        if image_id is not None:
            out.setdefault(str(image_id), int(task["id"]))
    return out


def add_tasks(
    client: LabelStudioClient,
    project_id: int,
    images: pd.DataFrame,
    masks: pd.DataFrame | None = None,
    model_version: str | None = None,
    document_root: str | Path | None = None,
    label: str = DEFAULT_LABELS[0],
    data: dict | None = None,
    known: dict[str, int] | None = None,
) -> dict[str, int]:
    """Import one task per image (rows with image_id, uri) with the image's masks as a prediction; ``data`` goes
    into every new task's data too (the round and stage its masks belong to). ``known``: the project's
    ``existing_tasks`` when the caller has just listed them (listing reads every task, page by page).

    Images already in the project are skipped, so a rerun adds nothing. Returns image_id -> task id for every
    image passed in.
    """
    for column in ("image_id", "uri"):
        if column not in images.columns:
            raise ValueError(f"images must have an {column!r} column, has {list(images.columns)}")
    known = dict(existing_tasks(client, project_id) if known is None else known)
    new_images = images[~images["image_id"].astype(str).isin(known)]
    by_image = {}
    if masks is not None and len(masks):
        by_image = {str(k): g for k, g in masks.groupby("image_id", observed=True)}
    payload = []
    folders = set()
    for row in new_images.itertuples(index=False):
        url = image_url(row.uri, document_root)
        if url.startswith("/data/local-files/"):
            folders.add(
                Path(urlparse(row.uri).path if row.uri.startswith("file:") else row.uri).resolve().parent
            )
        task: dict = {"data": {**(data or {}), IMAGE_NAME: url, "image_id": str(row.image_id)}}
        image_masks = by_image.get(str(row.image_id))
        if image_masks is not None and len(image_masks):
            version = model_version or str(image_masks["model_version"].iloc[0])
            task["predictions"] = [prediction_from_masks(image_masks, version, label)]
        payload.append(task)
    for folder in sorted(folders):
        ensure_local_storage(client, project_id, folder)
    if payload:
        ids = client.import_tasks(project_id, payload)
        for task, task_id in zip(payload, ids, strict=True):
            known[task["data"]["image_id"]] = task_id
    return {str(i): known[str(i)] for i in images["image_id"]}
