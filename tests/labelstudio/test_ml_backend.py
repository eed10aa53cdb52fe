"""The SAM ML backend over HTTP: protocol, token, embeddings computed once, clear 4xx for bad requests."""

import httpx
import numpy as np
import pytest

from tasks.labelstudio.convert import brush_rle_to_mask
from tasks.labelstudio.ml_backend import SamBackend, serve_in_thread

from .conftest import make_images

TOKEN = "backend-secret-0123456789"


@pytest.fixture
def backend(store, tmp_path, tiny_sam):
    make_images(store, tmp_path / "imgs", n=2, height=48, width=64)
    be = SamBackend(store, tiny_sam, "tiny-test", token=TOKEN)
    srv, url = serve_in_thread(be)
    yield be, url
    srv.shutdown()
    srv.server_close()


def _click(x_pct, y_pct, positive=True):
    return {
        "type": "keypointlabels",
        "from_name": "click",
        "to_name": "image",
        "is_positive": positive,
        "value": {"x": x_pct, "y": y_pct, "width": 1, "keypointlabels": ["object"]},
    }


def _body(image_id, prompts, task_id=1):
    return {
        "tasks": [{"id": task_id, "data": {"image_id": image_id}}],
        "params": {"context": {"result": prompts}},
    }


def test_health_is_open_and_setup_needs_the_token(backend):
    _, url = backend
    assert httpx.get(f"{url}/health").json()["status"] == "UP"
    assert httpx.post(f"{url}/setup", json={"project": "1.0"}).status_code == 401
    wrong = httpx.post(f"{url}/setup", json={}, auth=("label-studio", "nope"))
    assert wrong.status_code == 401 and TOKEN not in wrong.text
    ok = httpx.post(f"{url}/setup", json={"project": "1.0"}, auth=("label-studio", TOKEN))
    assert ok.json() == {"model_version": "tiny-test"}


def test_a_click_returns_a_brush_mask_and_the_embedding_is_computed_once(backend, store, monkeypatch):
    be, url = backend
    assert not store.has_embedding("img0", "tiny-test")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    resp = httpx.post(f"{url}/predict", json=_body("img0", [_click(50, 50)]), headers=auth, timeout=60)
    assert resp.status_code == 200, resp.text
    (prediction,) = resp.json()["results"]
    (result,) = prediction["result"]
    assert result["type"] == "brushlabels" and result["value"]["brushlabels"] == ["object"]
    assert (result["original_height"], result["original_width"]) == (48, 64)
    mask = brush_rle_to_mask(result["value"]["rle"], 48, 64)
    assert mask.shape == (48, 64)
    assert prediction["model_version"] == "tiny-test" and prediction["score"] == result["score"]
    assert store.has_embedding("img0", "tiny-test")
    stored = store.get_embedding("img0", "tiny-test")
    assert stored.shape == (256, 32, 32)

    # Later clicks, on this image or after a switch back to it, never run the image encoder again.
    def no_encoder(*args, **kwargs):
        raise AssertionError("the image encoder ran for an embedded image")

    monkeypatch.setattr(be.predictor, "set_image", no_encoder)
    be._cache.clear()
    be._current = None
    body = _body("img0", [_click(50, 50), _click(10, 10, positive=False)])
    again = httpx.post(f"{url}/predict", json=body, headers=auth, timeout=60)
    assert again.status_code == 200, again.text


def test_a_box_prompt_returns_a_mask(backend):
    _, url = backend
    box = {
        "type": "rectanglelabels",
        "value": {"x": 10, "y": 10, "width": 50, "height": 60, "rectanglelabels": ["object"]},
    }
    resp = httpx.post(f"{url}/predict", json=_body("img1", [box]), auth=("u", TOKEN), timeout=60)
    assert resp.status_code == 200, resp.text
    assert resp.json()["results"][0]["result"][0]["original_width"] == 64


def test_unknown_image_is_a_clear_404(backend):
    _, url = backend
    resp = httpx.post(f"{url}/predict", json=_body("no-such-image", [_click(5, 5)]), auth=("u", TOKEN))
    assert resp.status_code == 404
    assert "unknown image_id 'no-such-image'" in resp.json()["error"]


@pytest.mark.parametrize(
    "body, message",
    [
        ({"tasks": [{"id": 4, "data": {}}]}, "task 4: data has no image_id"),
        ({"nothing": 1}, "'tasks' list"),
        (
            _body("img0", [{"type": "keypointlabels", "value": {"y": 3}}], task_id=5),
            "task 5: bad keypointlabels",
        ),
    ],
)
def test_malformed_predict_requests_are_400(backend, body, message):
    _, url = backend
    resp = httpx.post(f"{url}/predict", json=body, auth=("u", TOKEN))
    assert resp.status_code == 400 and message in resp.json()["error"]


def test_no_context_gives_an_empty_prediction(backend):
    _, url = backend
    resp = httpx.post(
        f"{url}/predict", json={"tasks": [{"id": 1, "data": {"image_id": "img0"}}]}, auth=("u", TOKEN)
    )
    assert resp.json()["results"] == [{"result": [], "score": 0.0, "model_version": "tiny-test"}]


def test_mask_matches_a_direct_decoder_call(backend, store, tiny_sam):
    be, url = backend
    resp = httpx.post(f"{url}/predict", json=_body("img1", [_click(25, 75)]), auth=("u", TOKEN), timeout=60)
    got = brush_rle_to_mask(resp.json()["results"][0]["result"][0]["value"]["rle"], 48, 64)
    from sam_core.predictor import SamPredictor
    from tasks.ingest import load_image

    predictor = SamPredictor(tiny_sam)
    predictor.set_image(load_image(store.images().set_index("image_id").loc["img1", "uri"]))
    masks, scores, _ = predictor.predict(point_coords=np.array([[16.0, 36.0]]), point_labels=np.array([1]))
    assert np.array_equal(got, masks[int(np.argmax(scores))])


def test_a_further_click_feeds_the_previous_answer_back_as_the_mask_prompt(
    backend, store, tiny_sam, monkeypatch
):
    be, _ = backend
    seen = []
    predict = be.predictor.predict

    def spy(**kwargs):
        seen.append(kwargs.get("mask_input"))
        return predict(**kwargs)

    be.predictor.predict = spy
    one, two = [_click(25, 75)], [_click(25, 75), _click(60, 30, positive=False)]
    be.predict(_body("img1", one))
    got = be.predict(_body("img1", two))["results"][0]["result"][0]["value"]["rle"]
    be.predict(_body("img0", two))  # another image's clicks never reuse this one's answer
    assert seen[0] is None and seen[1] is not None and seen[2] is None
    from sam_core.predictor import SamPredictor
    from tasks.ingest import load_image

    # The same two clicks by hand: the first click's best low-res logits, then both clicks with them as the prompt.
    predictor = SamPredictor(tiny_sam)
    predictor.set_image(load_image(store.images().set_index("image_id").loc["img1", "uri"]))
    _, scores, low_res = predictor.predict(point_coords=np.array([[16.0, 36.0]]), point_labels=np.array([1]))
    best = int(np.argmax(scores))
    assert np.allclose(seen[1], low_res[best : best + 1], atol=1e-5)
    masks, _, _ = predictor.predict(
        point_coords=np.array([[16.0, 36.0], [38.4, 14.4]]),
        point_labels=np.array([1, 0]),
        mask_input=low_res[best : best + 1],
        multimask_output=False,
    )
    assert np.array_equal(brush_rle_to_mask(got, 48, 64), masks[0])

    # Only the latest ANSWERS_KEPT answers are kept, the oldest dropped first.
    from tasks.labelstudio import ml_backend

    monkeypatch.setattr(ml_backend, "ANSWERS_KEPT", 2)
    newest = []
    for x in (10, 20, 30):
        be.predict(_body("img1", [_click(x, 50)]))
        newest.append(next(reversed(be._answered)))
    assert list(be._answered) == newest[1:]
