"""Against a real Label Studio: project from the engine, annotations posted as a browser would, sync, edit,
delete, re-sync; malformed and foreign results; a wrong token; SAM answering a click, and a text model answering
a phrase typed in the text box, through Label Studio."""

import logging
import secrets
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from label_studio_sdk.converter.brush import encode_rle

from tasks.labelstudio import project
from tasks.labelstudio.client import LabelStudioAuthError, LabelStudioClient, LabelStudioError
from tasks.labelstudio.convert import brush_rle_to_mask, coco_rle_to_mask
from tasks.labelstudio.ml_backend import SamBackend, serve_in_thread
from tasks.labelstudio.sync import sync_project

from .conftest import make_images

pytestmark = pytest.mark.integration
H, W = 48, 64


def _browser_brush(mask, result_id, colour=(255, 0, 0)):
    """A brush result as the Label Studio front end saves it: RGBA canvas pixels (colour + alpha) in its RLE."""
    rgba = np.zeros((*mask.shape, 4), np.uint8)
    rgba[mask] = [*colour, 255]
    return {
        "id": result_id,
        "type": "brushlabels",
        "from_name": project.BRUSH_NAME,
        "to_name": project.IMAGE_NAME,
        "original_width": mask.shape[1],
        "original_height": mask.shape[0],
        "image_rotation": 0,
        "value": {
            "format": "rle",
            "rle": [int(v) for v in encode_rle(rgba.ravel())],
            "brushlabels": ["object"],
        },
    }


def _post_as_browser(client, project_id, task_id, results, lead_time):
    body = {
        "result": results,
        "lead_time": lead_time,
        "draft_id": 0,
        "parent_prediction": None,
        "parent_annotation": None,
        "project": str(project_id),
    }
    return client.post(f"/api/tasks/{task_id}/annotations", body, project=project_id)


def _box(y0, y1, x0, x1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def _new_project(client, store, document_root, name, run_id):
    name = f"{name}-{run_id}"
    images = make_images(store, Path(document_root) / name, n=2, height=H, width=W, prefix=f"{name}-")
    pid = project.ensure_project(client, f"engine {name}")
    assert project.ensure_project(client, f"engine {name}") == pid  # idempotent by title
    tasks = project.add_tasks(client, pid, store.images(), document_root=document_root)
    assert (
        project.add_tasks(client, pid, store.images(), document_root=document_root) == tasks
    )  # no duplicates
    ids = list(images.image_id)
    return pid, [tasks[i] for i in ids], ids


def test_project_tasks_and_predictions_are_set_up_from_the_engine(ls_client, store, document_root, run_id):
    images = make_images(store, Path(document_root) / run_id, n=1, height=H, width=W, prefix="setup-")
    masks = store_model_masks(store, images.image_id[0])
    pid = project.ensure_project(ls_client, f"engine setup {run_id}")
    config = ls_client.get_project(pid)["label_config"]
    assert 'smart="true"' in config and "<BrushLabels" in config
    tasks = project.add_tasks(ls_client, pid, images, masks=masks, document_root=document_root)
    task = ls_client.get_task(tasks["setup-0"])
    assert task["data"]["image"] == f"/data/local-files/?d={run_id}/setup-0.png"
    (prediction,) = task["predictions"]
    assert prediction["model_version"] == "tiny-r0"
    got = brush_rle_to_mask(prediction["result"][0]["value"]["rle"], H, W)
    assert np.array_equal(got, coco_rle_to_mask(masks.counts.iloc[0], H, W))
    # Label Studio serves the image itself from the document root.
    assert ls_client._http.get(task["data"]["image"]).status_code == 200


def store_model_masks(store, image_id):
    import pandas as pd

    from tasks.labelstudio.convert import mask_to_coco_rle

    mask = _box(5, 20, 5, 30)
    df = pd.DataFrame(
        [
            {
                "image_id": image_id,
                "counts": mask_to_coco_rle(mask)["counts"],
                "height": H,
                "width": W,
                "source": "model",
                "model_version": "tiny-r0",
                "predicted_iou": 0.9,
            }
        ]
    )
    store.write_masks(df, round=0, stage="automatic", shard="m0")
    return store.masks(source="model")


def test_sync_edit_delete_resync_loses_and_duplicates_nothing(ls_client, store, document_root, run_id):
    pid, tasks, image_ids = _new_project(ls_client, store, document_root, "life", run_id)
    a, b, c = _box(2, 20, 3, 40), _box(25, 45, 10, 60), _box(0, 10, 50, 64)
    ann1 = _post_as_browser(
        ls_client, pid, tasks[0], [_browser_brush(a, "ra"), _browser_brush(b, "rb")], 12.0
    )
    ann2 = _post_as_browser(ls_client, pid, tasks[1], [_browser_brush(c, "rc", (0, 255, 0))], 5.0)

    first = sync_project(ls_client, store, pid, round=1, stage="assisted_manual", emit=False)
    assert (first.new, first.edited, first.deleted, first.skipped) == (3, 0, 0, [])
    masks = store.masks(round=1, stage="assisted_manual").set_index("image_id", drop=False)
    assert len(masks) == 3 and set(masks.source) == {"human"}
    assert set(masks.annotator) == {ls_client.whoami()["email"]}
    got = {(r.image_id, r.area): coco_rle_to_mask(r.counts, H, W) for r in masks.itertuples()}
    for image_id, mask in [(image_ids[0], a), (image_ids[0], b), (image_ids[1], c)]:
        assert np.array_equal(got[(image_id, int(mask.sum()))], mask)  # pixel-equal after both RLE codecs
    assert sorted(masks.seconds) == [5.0, 6.0, 6.0]  # lead time shared over an annotation's masks

    again = sync_project(ls_client, store, pid, round=1, stage="assisted_manual", emit=False)
    assert again.written == 0 and again.shard is None
    assert len(store.masks(current_only=False)) == 3

    a2 = _box(2, 30, 3, 40)  # the person widens mask a and erases mask b; annotation 2 is deleted
    ls_client.patch(
        f"/api/annotations/{ann1['id']}", {"result": [_browser_brush(a2, "ra")], "lead_time": 20.0}
    )
    ls_client.delete_annotation(ann2["id"])
    second = sync_project(ls_client, store, pid, round=1, stage="assisted_manual", emit=False)
    assert (second.new, second.edited, second.deleted) == (0, 1, 2)

    current = store.masks()
    assert len(current) == 1
    assert np.array_equal(coco_rle_to_mask(current.counts.iloc[0], H, W), a2)
    history = store.masks(current_only=False)
    assert len(history) == 6 and history.mask_id.is_unique
    old_a = masks[masks.area == int(a.sum())].mask_id.iloc[0]
    assert current.supersedes.iloc[0] == old_a
    tombstones = history[history.deleted]
    assert set(tombstones.supersedes) == set(masks.mask_id) - {old_a}

    third = sync_project(ls_client, store, pid, round=1, stage="assisted_manual", emit=False)
    assert third.written == 0 and len(store.masks(current_only=False)) == 6


def test_malformed_and_foreign_results_are_reported_and_skipped(
    ls_client, store, document_root, run_id, caplog
):
    pid, tasks, _ = _new_project(ls_client, store, document_root, "bad", run_id)
    good = _box(1, 9, 1, 9)
    truncated = _browser_brush(good, "rt")
    truncated["value"]["rle"] = truncated["value"]["rle"][:6]
    wrong_size = _browser_brush(_box(0, 4, 0, 4)[:4, :4], "rw")
    wrong_size["original_width"], wrong_size["original_height"] = W, H
    _post_as_browser(ls_client, pid, tasks[0], [_browser_brush(good, "rg"), truncated, wrong_size], 3.0)
    foreign_task = ls_client.import_tasks(pid, [{"data": {"image": "/data/local-files/?d=x.png"}}])[0]
    _post_as_browser(ls_client, pid, foreign_task, [_browser_brush(good, "rf")], 1.0)
    caplog.set_level(logging.WARNING)
    report = sync_project(ls_client, store, pid, round=2, stage="semi_automatic", emit=False)
    skipped = {(s.task_id, s.result_id): s.reason for s in report.skipped}
    assert "truncated" in skipped[(tasks[0], "rt")]
    assert "expected 4 * 48 * 64" in skipped[(tasks[0], "rw")]
    assert "no image_id" in skipped[(foreign_task, None)]
    assert f"task {tasks[0]}" in caplog.text
    (mask,) = store.masks(round=2).itertuples()
    assert np.array_equal(coco_rle_to_mask(mask.counts, H, W), good) and mask.seconds == 3.0


def test_wrong_token_is_a_clear_error_and_never_printed(ls_server, store, caplog):
    token = secrets.token_hex(20)
    client = LabelStudioClient(ls_server.url, token, retries=0)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(LabelStudioAuthError, match="refused the API token") as info:
        sync_project(client, store, 1, round=1, stage="assisted_manual", emit=False)
    assert token not in str(info.value) and token not in caplog.text
    assert len(store.masks(current_only=False)) == 0


def test_label_studio_calls_the_ml_backend_for_a_keypoint(ls_client, store, document_root, tiny_sam, run_id):
    pid, tasks, image_ids = _new_project(ls_client, store, document_root, "sam", run_id)
    backend_token = secrets.token_hex(16)
    backend = SamBackend(store, tiny_sam, "tiny-test", token=backend_token)
    srv, url = serve_in_thread(backend)
    try:
        ml = ls_client.add_ml_backend(pid, url, token=backend_token)
        assert ml["state"] == "CO"  # Label Studio reached /health and /setup with the token
        click = {
            "type": "keypointlabels",
            "from_name": project.KEYPOINT_NAME,
            "to_name": project.IMAGE_NAME,
            "original_width": W,
            "original_height": H,
            "is_positive": True,
            "value": {"x": 40.0, "y": 60.0, "width": 1, "keypointlabels": ["object"]},
        }
        answer = ls_client.interactive_annotating(ml["id"], tasks[1], {"result": [click]})
        assert "errors" not in answer, answer
        (result,) = answer["data"]["result"]
        assert result["type"] == "brushlabels" and answer["data"]["model_version"] == "tiny-test"
        assert brush_rle_to_mask(result["value"]["rle"], H, W).shape == (H, W)
        assert store.has_embedding(image_ids[1], "tiny-test")

        # Registering it with the wrong token fails: Label Studio reports our backend's 401 on /setup.
        with pytest.raises(LabelStudioError, match="401 Client Error: Unauthorized for url: .*/setup"):
            ls_client.add_ml_backend(pid, url, title="wrong token", token="not-the-token")
    finally:
        srv.shutdown()
        srv.server_close()


def test_label_studio_returns_the_masks_of_a_phrase_typed_in_the_text_box(
    ls_client, store, document_root, trained_text_model, run_id
):
    from PIL import Image

    from sam_core.synthetic import make_scene, split_seeds

    # The scene the shared text model was trained on, served by Label Studio from its document root.
    folder = Path(document_root) / f"text-{run_id}"
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(make_scene(split_seeds("train", 1)[0]).image).save(folder / "scene.png")
    row = {"image_id": f"scene-{run_id}", "uri": str(folder / "scene.png"), "width": 256, "height": 256}
    store.write_images(pd.DataFrame([{**row, "sha256": "s", "split": "train"}]))
    pid = project.ensure_project(ls_client, f"engine text {run_id}", labels=["cell"])
    assert f'<TextArea name="{project.TEXT_NAME}"' in ls_client.get_project(pid)["label_config"]
    task = project.add_tasks(ls_client, pid, store.images(), document_root=document_root)[row["image_id"]]
    model, encoder = trained_text_model
    backend_token = secrets.token_hex(16)
    backend = SamBackend(store, model, "text-test", token=backend_token, text_encoder=encoder)
    srv, url = serve_in_thread(backend)
    try:
        ml = ls_client.add_ml_backend(pid, url, token=backend_token)
        assert ml["state"] == "CO"

        def typed(phrase):
            """The context the browser sends when a phrase is added in the text box with auto-annotation on."""
            box = {"from_name": project.TEXT_NAME, "to_name": project.IMAGE_NAME, "type": "textarea"}
            return ls_client.interactive_annotating(
                ml["id"], task, {"result": [{**box, "value": {"text": [phrase]}}]}
            )

        answer = typed("every part inside the mottled object")
        assert "errors" not in answer, answer
        results = answer["data"]["result"]
        assert len(results) > 1 and answer["data"]["model_version"] == "text-test"  # one mask per instance
        for result in results:
            assert result["type"] == "brushlabels" and result["value"]["brushlabels"] == ["cell"]
            assert brush_rle_to_mask(result["value"]["rle"], 256, 256).sum() >= 16

        # A phrase the backend cannot take: Label Studio passes the reason on (from the refusal's status line).
        refused = typed("   ")
        assert "400 Client Error: task" in refused["errors"][0]
        assert "bad text prompt: text is empty (only whitespace)" in refused["errors"][0]
        refused = typed("the " * 12 + "object")
        assert "takes at most 12 (its context length)" in refused["errors"][0]

        # A phrase judged absent (here: any, at a presence bar no phrase reaches): no mask, and the note box under
        # the phrase box says why.
        assert f'<TextArea name="{project.NOTE_NAME}"' in ls_client.get_project(pid)["label_config"]
        backend.presence_threshold = 1.01
        (note,) = typed("every part inside the mottled object")["data"]["result"]
        assert (note["from_name"], note["type"]) == (project.NOTE_NAME, "textarea")
        assert note["value"]["text"][0].startswith("no mask: the model judges 'every part inside the mottled")
    finally:
        srv.shutdown()
        srv.server_close()


def test_the_label_studio_annotator_returns_what_a_person_submitted(ls_client, store, document_root, run_id):
    from tasks.annotators import AnnotationRequest
    from tasks.labelstudio.annotator import LabelStudioAnnotator

    images = make_images(store, Path(document_root) / f"ann-{run_id}", n=2, height=H, width=W, prefix="ann-")
    pid = project.ensure_project(ls_client, f"engine annotator {run_id}")
    annotator = LabelStudioAnnotator(ls_client, pid, document_root, poll_seconds=0.2, timeout_seconds=1.0)
    prefilled = _box(0, 5, 0, 5)
    requests = [
        AnnotationRequest(
            image_id=r.image_id, uri=r.uri, height=H, width=W, predictor=None, prefilled=[prefilled]
        )
        for r in images.itertuples()
    ]
    task_id = annotator.submit(requests[0])
    (prediction,) = ls_client.get_task(task_id)["predictions"]
    assert np.array_equal(brush_rle_to_mask(prediction["result"][0]["value"]["rle"], H, W), prefilled)
    drawn = _box(10, 30, 10, 30)
    click = {
        "id": "k1",
        "type": "keypointlabels",
        "from_name": project.KEYPOINT_NAME,
        "to_name": project.IMAGE_NAME,
        "original_width": W,
        "original_height": H,
        "value": {"x": 25.0, "y": 50.0, "width": 1, "keypointlabels": ["object"]},
    }
    _post_as_browser(ls_client, pid, task_id, [click, _browser_brush(drawn, "rd")], 9.0)
    (got,) = annotator.annotate(requests[0])
    assert np.array_equal(got.mask, drawn) and got.seconds == 9.0 and got.clicks == 1
    assert got.point_coords == [[16.0, 24.0]] and got.annotator == ls_client.whoami()["email"]
    assert annotator.annotate(requests[1]) == []  # nobody labelled it within the timeout


def test_a_semi_automatic_push_sends_confident_masks_as_predictions_and_writes_none(
    ls_client, store, document_root, run_id
):
    from tasks.autogen import AutogenSettings
    from tasks.embed import embed
    from tasks.filter import FilterSettings
    from tasks.labelstudio.push import confident_masks, push_images

    name = f"semi-{run_id}"
    images = make_images(store, Path(document_root) / name, n=2, height=H, width=W, prefix=f"{name}-")
    ids = list(images.image_id)
    embed.fn(store.url, "embedded", ids, backend="local")
    # Thresholds at zero: the embedded model is not trained on noise images, and the test is about the plumbing.
    lenient = FilterSettings(min_predicted_iou=0.0, min_stability_score=0.0, min_area=1)
    grid = AutogenSettings(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    masks = confident_masks(store, "embedded", ids, grid, lenient, round=2, stage="semi_automatic")
    assert len(masks) > 0 and set(masks["image_id"]) <= set(ids)

    report = push_images(
        ls_client, store, ids, 2, "semi_automatic", f"engine {name}", ["object"], masks, document_root
    )
    assert (report.added, report.existing, report.predicted_masks) == (2, 0, len(masks))
    tasks = {t["data"]["image_id"]: t for t in ls_client.iter_tasks(report.project_id)}
    for image_id, group in masks.groupby("image_id"):
        (prediction,) = tasks[image_id]["predictions"]
        assert len(prediction["result"]) == len(group)
        assert {r["id"] for r in prediction["result"]} == {m[:32] for m in group["mask_id"]}
    assert tasks[ids[0]]["data"]["round"] == 2 and tasks[ids[0]]["data"]["stage"] == "semi_automatic"
    assert (
        len(store.masks(current_only=False)) == 0
    )  # a prediction becomes a mask only when a person submits it
    again = push_images(
        ls_client, store, ids, 2, "semi_automatic", f"engine {name}", ["object"], masks, document_root
    )
    assert (again.added, again.existing, again.predicted_masks) == (0, 2, 0)
