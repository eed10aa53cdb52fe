"""The project's text box through the SAM ML backend over HTTP: a phrase is answered with the masks it names by a
text model (as `segment --text` answers it), clicks and boxes are answered as before, and a phrase the backend
cannot take is a 400 that names why, in the body and in the status line Label Studio shows."""

import json

import httpx
import numpy as np
import pytest
from PIL import Image

from sam_core.predictor import SamPredictor
from sam_core.synthetic import make_scene, split_seeds
from sam_core.text_instances import segment_phrase
from tasks.labelstudio import project, sync
from tasks.labelstudio.convert import brush_rle_to_mask
from tasks.labelstudio.ml_backend import SamBackend, serve_in_thread, serving_model

from .conftest import make_images

TOKEN = "backend-secret-0123456789"
AUTH = ("label-studio", TOKEN)
EVERY = "every part inside the mottled object"  # three instances on the scene the text model trained on
SIZE = 256


@pytest.fixture(scope="module")
def scene_image(tmp_path_factory):
    """The scene the shared text model was trained on, as a PNG file."""
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    Image.fromarray(make_scene(split_seeds("train", 1)[0]).image).save(path)
    return path


def _register_scene(store, path):
    import pandas as pd

    row = {
        "image_id": "scene",
        "uri": str(path),
        "width": SIZE,
        "height": SIZE,
        "sha256": "s",
        "split": "train",
    }
    store.write_images(pd.DataFrame([row]))


@pytest.fixture
def text_backend(store, scene_image, trained_text_model):
    _register_scene(store, scene_image)
    model, encoder = trained_text_model
    be = SamBackend(store, model, "text-test", token=TOKEN, text_encoder=encoder)
    srv, url = serve_in_thread(be)
    yield be, url
    srv.shutdown()
    srv.server_close()


def _phrase(*texts):
    """A text-box result as Label Studio puts it in the context: a textarea with the phrase(s) typed."""
    return {
        "id": "t1",
        "type": "textarea",
        "from_name": project.TEXT_NAME,
        "to_name": project.IMAGE_NAME,
        "origin": "manual",
        "value": {"text": list(texts)},
    }


def _body(prompts, image_id="scene", labels=("object",)):
    return {
        "tasks": [{"id": 7, "data": {"image_id": image_id}}],
        "label_config": project.label_config(labels),
        "params": {"context": {"result": prompts}},
    }


def _post(url, body):
    """POST as Label Studio does (requests' json=): ASCII JSON, so a lone surrogate travels as its escape."""
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    return httpx.post(f"{url}/predict", content=data, headers=headers, auth=AUTH, timeout=120)


def _direct(trained_text_model, phrase):
    """What segment_phrase answers for the phrase on the scene, with no backend between."""
    model, encoder = trained_text_model
    predictor = SamPredictor(model, text_encoder=encoder)
    predictor.set_image(make_scene(split_seeds("train", 1)[0]).image)
    return segment_phrase(predictor, phrase)


def test_the_labeling_config_has_a_text_box_and_text_masks_take_its_first_brush_label():
    config = project.label_config(["cell", "nucleus"])
    assert f'<TextArea name="{project.TEXT_NAME}" toName="{project.IMAGE_NAME}"' in config
    assert 'maxSubmissions="1"' in config and 'smart="true"' in config  # clicks and boxes still go to SAM
    assert project.brush_label(config) == "cell"
    assert f'<TextArea name="{project.NOTE_NAME}" toName="{project.IMAGE_NAME}" editable="false"' in config
    assert (
        project.has_note_box(config) and not project.has_note_box(None) and not project.has_note_box("<View")
    )
    assert project.brush_label(None) == project.brush_label("<View") == project.DEFAULT_LABELS[0]


def test_a_phrase_gets_the_masks_it_names_as_segment_text_would(text_backend, trained_text_model, store):
    _, url = text_backend
    resp = _post(url, _body([_phrase(EVERY)], labels=("cell",)))
    assert resp.status_code == 200, resp.text
    (prediction,) = resp.json()["results"]
    direct = _direct(trained_text_model, EVERY)
    assert len(direct.masks) > 1 and len(prediction["result"]) == len(direct.masks)  # one result per instance
    for result, mask, score in zip(prediction["result"], direct.masks, direct.scores, strict=True):
        assert result["type"] == "brushlabels" and result["value"]["brushlabels"] == ["cell"]
        assert (result["original_height"], result["original_width"]) == (SIZE, SIZE)
        assert np.array_equal(brush_rle_to_mask(result["value"]["rle"], SIZE, SIZE), mask)
        assert result["score"] == pytest.approx(score)
    assert prediction["score"] == pytest.approx(max(direct.scores))
    assert prediction["presence"] == pytest.approx(direct.presence) and "why_empty" not in prediction
    assert prediction["model_version"] == "text-test" and store.has_embedding("scene", "text-test")
    one = _post(url, _body([_phrase("the rectangle")])).json()["results"][0]
    assert len(one["result"]) == 1  # a phrase naming one thing: its one mask


def test_clicks_beside_a_phrase_are_answered_as_clicks(text_backend):
    _, url = text_backend
    click = {
        "type": "keypointlabels",
        "is_positive": True,
        "value": {"x": 30.0, "y": 40.0, "keypointlabels": ["object"]},
    }
    alone = _post(url, _body([click])).json()["results"][0]
    beside = _post(url, _body([_phrase(EVERY), click])).json()["results"][0]
    assert len(beside["result"]) == 1 and "presence" not in beside
    assert beside["result"][0]["value"]["rle"] == alone["result"][0]["value"]["rle"]


def test_a_phrase_judged_absent_gets_no_mask_and_says_why(store, scene_image, trained_text_model):
    _register_scene(store, scene_image)
    model, encoder = trained_text_model
    be = SamBackend(store, model, "text-test", text_encoder=encoder, presence_threshold=1.0)
    (prediction,) = be.predict(_body([_phrase(EVERY)]))["results"]
    why = prediction["why_empty"]
    assert why.startswith(f"no mask: the model judges {EVERY!r} absent from the image")
    # no mask, and the labeling config's note box says why, where the person who typed the phrase looks
    assert prediction["score"] == 0.0 and prediction["result"] == [
        {
            "from_name": project.NOTE_NAME,
            "to_name": project.IMAGE_NAME,
            "type": "textarea",
            "value": {"text": [why]},
        }
    ]
    # a project made before the note box has none: Label Studio would refuse a result for it
    old_config = project.label_config().replace(f'name="{project.NOTE_NAME}"', 'name="other"')
    (older,) = be.predict({**_body([_phrase(EVERY)]), "label_config": old_config})["results"]
    assert older["result"] == [] and older["why_empty"] == why


TOO_LONG = "the " * 12 + "object"  # 13 words and the summary token: over the embedded encoder's 12


@pytest.mark.parametrize(
    "texts, message",
    [
        ([""], "task 7: bad text prompt: text is empty: the embedded text encoder needs a phrase"),
        (
            ["   "],
            "task 7: bad text prompt: text is empty (only whitespace): the embedded text encoder needs",
        ),
        ([TOO_LONG], "is 14 tokens long; the embedded text encoder takes at most 12 (its context length)"),
        (["every red triangle"], "['triangle'] not in the embedded text encoder's vocabulary"),
        (["every red\udcffobject"], "text is not valid UTF-8: byte 0xff at character 9"),
        ([5], "task 7: bad text prompt: text must be a str (or UTF-8 bytes), got int"),
        ([], "task 7: the text box holds 0 phrases; the backend answers one at a time"),
        (["every red object", "the rectangle"], "the text box holds 2 phrases"),
    ],
)
def test_a_phrase_the_backend_cannot_take_is_a_400_naming_why(text_backend, texts, message):
    be, url = text_backend
    be._cache.clear()
    resp = _post(url, _body([_phrase(*texts)]))
    assert resp.status_code == 400 and message in resp.json()["error"]
    # Label Studio shows only the status line of a refused request: the reason is there too (Latin-1).
    assert resp.reason_phrase == resp.json()["error"].encode("latin-1", "replace").decode("latin-1")
    assert not be._cache  # refused before the image was touched


def test_a_body_that_is_not_utf8_is_a_400_naming_the_byte(text_backend):
    _, url = text_backend
    raw = b'{"tasks": [{"id": 7, "data": {"image_id": "scene"}}], "params": {"context": {"result": '
    raw += b'[{"type": "textarea", "value": {"text": ["every \xff object"]}}]}}}'
    resp = httpx.post(
        f"{url}/predict", content=raw, auth=AUTH, headers={"Content-Type": "application/json"}, timeout=60
    )
    offset = raw.index(b"\xff")
    assert resp.status_code == 400
    assert resp.json()["error"] == (
        f"body is not valid UTF-8: byte 0xff at offset {offset} (invalid start byte); send JSON encoded as UTF-8"
    )


def test_a_backend_without_a_text_model_refuses_a_phrase_saying_how_to_serve_one(store, tmp_path, tiny_sam):
    make_images(store, tmp_path / "imgs", n=1)
    be = SamBackend(store, tiny_sam, "tiny-test")
    assert be.health()["text_prompts"] is False
    srv, url = serve_in_thread(be)
    try:
        resp = httpx.post(f"{url}/predict", json=_body([_phrase(EVERY)], image_id="img0"), timeout=60)
    finally:
        srv.shutdown()
        srv.server_close()
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert "a phrase needs a text model, and this backend serves 'tiny-test', which has no text path" in error
    assert "scripts/train_text.py" in error and "sam-engine labelstudio backend -m NAME" in error


def test_a_registered_text_model_is_served_with_its_text_encoder(
    store, register_text_model, register_plain_model
):
    register_text_model(store, "text-v1")
    model, version, encoder = serving_model(store, "text-v1")
    assert version == "text-v1" and encoder is not None and model.prompt_encoder.text_dim == encoder.embed_dim
    assert SamBackend(store, model, version, text_encoder=encoder).health()["text_prompts"] is True
    # The shipped model is served with the text path shipped beside it, as the store's embeddings' version.
    shipped, version, encoder = serving_model(store, "embedded")
    assert (
        version == "embedded" and encoder is not None and shipped.prompt_encoder.text_dim == encoder.embed_dim
    )
    register_plain_model(store, "plain")
    plain, version, none = serving_model(store, "plain")
    assert version == "plain" and none is None and plain.prompt_encoder.text_dim == 0
    with pytest.raises(ValueError, match="--clip-checkpoint is for a CLIP text model; model 'plain' has no"):
        serving_model(store, "plain", clip_checkpoint="clip.bin")
    with pytest.raises(ValueError, match="reads text with the embedded text encoder, not CLIP's"):
        serving_model(store, "text-v1", clip_checkpoint="clip.bin")


def test_a_sync_passes_over_the_phrase_a_person_typed(store):
    mask = np.zeros((8, 10), bool)
    mask[2:6, 3:9] = True
    results = [_phrase(EVERY), project.brush_result(mask, result_id="r1")]
    ann = {"id": 11, "result": results, "completed_by": 1, "updated_at": "2026-01-01T00:00:00Z"}
    task = {"id": 5, "data": {"image_id": "im"}, "annotations": [ann]}

    class Client:
        url = "http://fake:8080"

        def iter_tasks(self, project_id):
            return iter([task])

        def user_emails(self):
            return {1: "ann@example.org"}

    report = sync.sync_project(Client(), store, 1, round=1, stage="assisted_manual", emit=False)
    assert report.skipped == [] and len(store.masks(round=1)) == 1


def test_a_recognizer_text_model_answers_the_phrase_from_the_image_beside_its_embedding(store, scene_image):
    """A recognizer model (sam_core.text_recognition) reads the pixels: the backend loads the task's image beside the
    stored embedding, and answers as the model does on the image itself."""
    from sam_core.text_train import TextTrainConfig, TextTrainer

    trainer = TextTrainer(
        TextTrainConfig(steps=10, dataset_size=1, scenes_per_step=1, warmup_steps=1, recognizer_width=16)
    )
    for _ in range(10):
        trainer.step()
    model, encoder = trainer.model.eval(), trainer.text_encoder.eval()
    _register_scene(store, scene_image)
    be = SamBackend(store, model, "ground-test", token=TOKEN, text_encoder=encoder)
    srv, url = serve_in_thread(be)
    try:
        for _ in range(2):  # the second answer comes from the stored embedding, with the image loaded again
            resp = _post(url, _body([_phrase("the rectangle")]))
            assert resp.status_code == 200, resp.text
            (prediction,) = resp.json()["results"]
            direct = _direct((model, encoder), "the rectangle")
            assert prediction["presence"] == pytest.approx(direct.presence, abs=1e-5)
            brushes = [r for r in prediction["result"] if r["type"] == "brushlabels"]
            assert len(brushes) == len(direct.masks)
            for result, mask in zip(brushes, direct.masks, strict=True):
                assert np.array_equal(brush_rle_to_mask(result["value"]["rle"], SIZE, SIZE), mask)
            be._current = None  # forget the image, so the next answer sets it from the store
    finally:
        srv.shutdown()
        srv.server_close()
