"""The text path of the prompt encoder and the presence head: absent, they change nothing; present, they add
tokens after the points and boxes and a presence logit per prompt; checkpoints without them load by one rule."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from sam_core import SamPredictor, build_sam, build_sam_from_config
from sam_core.build import CONFIGS
from sam_core.checkpoint import TEXT_PREFIXES, load_weights, text_keys
from sam_core.text_model import load_text_model, text_checkpoint


def _pair():
    """(a tiny_conv model without a text path, the same weights with one)."""
    torch.manual_seed(1)
    plain = build_sam_from_config(CONFIGS["tiny_conv"])
    torch.manual_seed(2)
    texted = build_sam_from_config(dataclasses.replace(CONFIGS["tiny_conv"], text_dim=32))
    texted.load_state_dict({**texted.state_dict(), **plain.state_dict()}, strict=True)
    return plain, texted


def test_a_model_without_text_has_exactly_the_official_parameters():
    plain = build_sam_from_config(CONFIGS["tiny"])
    texted = build_sam_from_config(dataclasses.replace(CONFIGS["tiny"], text_dim=32))
    assert text_keys(plain.state_dict()) == []
    extra = set(texted.state_dict()) - set(plain.state_dict())
    assert extra == set(text_keys(texted.state_dict())) and extra
    assert all(k.startswith(TEXT_PREFIXES) for k in extra)


PROMPTS = {
    "one point": dict(point_coords=[[120, 90]], point_labels=[1]),
    "points": dict(point_coords=[[120, 90], [30, 200]], point_labels=[1, 0]),
    "box": dict(box=[40, 30, 180, 150]),
    "points and box": dict(point_coords=[[100, 80]], point_labels=[1], box=[40, 30, 180, 150]),
}


@pytest.mark.parametrize("case", sorted(PROMPTS))
@pytest.mark.parametrize("multimask_output", [True, False])
def test_text_path_changes_nothing_when_no_text_is_given(scene, case, multimask_output):
    plain, texted = _pair()
    ours, theirs = SamPredictor(texted), SamPredictor(plain)
    ours.set_image(scene.image)
    theirs.set_image(scene.image)
    prompt = {k: np.array(v) for k, v in PROMPTS[case].items()}
    first = ours.predict(**prompt, multimask_output=multimask_output)
    second = theirs.predict(**prompt, multimask_output=multimask_output)
    assert len(first) == 3
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    # the mask prompt fed back, and the batched path
    again = [
        ours.predict(**prompt, mask_input=first[2][:1]),
        theirs.predict(**prompt, mask_input=second[2][:1]),
    ]
    np.testing.assert_array_equal(again[0][2], again[1][2])
    if "point_coords" in prompt:
        batch = {"point_coords": prompt["point_coords"][None], "point_labels": prompt["point_labels"][None]}
        for a, b in zip(ours.predict_batch(**batch), theirs.predict_batch(**batch), strict=True):
            assert torch.equal(a, b)


def test_sam_forward_without_text_is_unchanged_and_with_text_adds_presence(scene):
    plain, texted = _pair()
    image = torch.from_numpy(scene.image).permute(2, 0, 1).float()
    record = {
        "image": image,
        "original_size": (256, 256),
        "boxes": torch.tensor([[40.0, 30.0, 180.0, 150.0]]),
    }
    with torch.no_grad():
        a = texted([record], multimask_output=True)[0]
        b = plain([record], multimask_output=True)[0]
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
        c = texted([{**record, "text_embeddings": torch.randn(1, 32)}], multimask_output=False)[0]
    assert c["presence_logits"].shape == (1,) and c["masks"].shape == (1, 1, 256, 256)


def test_text_tokens_follow_the_point_and_box_tokens():
    _, texted = _pair()
    encoder = texted.prompt_encoder
    points = (torch.tensor([[[10.0, 20.0], [50.0, 60.0]]]), torch.tensor([[1, 0]]))
    boxes = torch.tensor([[5.0, 5.0, 100.0, 90.0]])
    text = torch.randn(1, 32)
    with torch.no_grad():
        without, _ = encoder(points, boxes, None)
        with_text, dense = encoder(points, boxes, None, text=text)
        alone, _ = encoder(None, None, None, text=text)
    assert with_text.shape == (1, without.shape[1] + encoder.text_projection.num_tokens, 256)
    assert torch.equal(with_text[:, : without.shape[1]], without)
    assert torch.equal(with_text[:, without.shape[1] :], alone)
    assert dense.shape == (1, 256, 32, 32)


def test_a_model_without_text_path_names_what_is_missing():
    plain, _ = _pair()
    with pytest.raises(ValueError, match="no text path .*text_dim"):
        plain.prompt_encoder(None, None, None, text=torch.randn(1, 32))
    sparse = torch.zeros(1, 1, 256)
    context = plain.mask_decoder.prepare(
        torch.zeros(1, 256, 32, 32),
        plain.prompt_encoder.get_dense_pe(),
        plain.prompt_encoder.no_mask_embed.weight,
    )
    with pytest.raises(ValueError, match="no presence head"):
        plain.mask_decoder.predict_masks(context, sparse, presence=True)


def test_predict_with_text_returns_masks_scores_logits_and_presence(text_model, embedded_text_encoder, scene):
    predictor = SamPredictor(text_model, text_encoder=embedded_text_encoder)
    predictor.set_image(scene.image)
    masks, scores, logits, presence = predictor.predict(text="the red ellipse")
    assert masks.shape == (1, 256, 256) and masks.dtype == bool
    assert scores.shape == (1,) and logits.shape == (1, 128, 128)
    assert isinstance(presence, float) and 0.0 <= presence <= 1.0
    # combinable with points and a box, and the text changes the answer
    click = dict(
        point_coords=np.array([[120, 90]]), point_labels=np.array([1]), box=np.array([40, 30, 180, 150])
    )
    with_text = predictor.predict(**click, text="every striped object", multimask_output=True)
    without = predictor.predict(**click, multimask_output=True)
    assert with_text[0].shape == (3, 256, 256) and len(without) == 3
    assert not np.array_equal(with_text[2], without[2])
    # bytes in UTF-8 are the same phrase
    np.testing.assert_array_equal(predictor.predict(text=b"the red ellipse")[2], logits)


def test_predictor_refuses_text_without_a_text_encoder_or_the_wrong_one(text_model, embedded_text_encoder):
    predictor = SamPredictor(text_model)
    # The embedding's channels are the model's prompt dimension (128 for the embedded model, 256 for SAM's).
    predictor.set_embedding(torch.zeros(text_model.prompt_encoder.embed_dim, 32, 32), (256, 256))
    with pytest.raises(ValueError, match="text prompts need a text encoder"):
        predictor.predict(text="the red ellipse")
    with pytest.raises(ValueError, match="model has no text path"):
        SamPredictor(build_sam("tiny_conv"), text_encoder=embedded_text_encoder)
    from sam_core.text_encoder import EmbeddedTextEncoder

    with pytest.raises(ValueError, match="64-d embeddings but the model's text path takes 128-d"):
        SamPredictor(text_model, text_encoder=EmbeddedTextEncoder(embed_dim=64))


# --- checkpoints: one rule for the text tensors -----------------------------------------------------------------


def test_checkpoint_without_text_into_a_text_model_needs_consent(tmp_path):
    plain, _ = _pair()
    path = tmp_path / "plain.pt"
    torch.save(plain.state_dict(), path)
    with pytest.raises(ValueError, match="holds no text path.*allow_untrained_text=True"):
        build_sam("tiny_conv", checkpoint=str(path), text_dim=32)
    torch.manual_seed(5)
    model = build_sam("tiny_conv", checkpoint=str(path), text_dim=32, allow_untrained_text=True)
    loaded = model.state_dict()
    for name, tensor in plain.state_dict().items():
        assert torch.equal(loaded[name], tensor), name
    torch.manual_seed(5)  # the text tensors are those of a fresh model built with the same seed
    fresh = build_sam("tiny_conv", text_dim=32)
    for name in text_keys(loaded):
        assert torch.equal(loaded[name], fresh.state_dict()[name]), name


def test_checkpoint_with_part_of_the_text_path_is_refused_naming_it(tmp_path):
    _, texted = _pair()
    state = dict(texted.state_dict())
    del state["mask_decoder.presence_token.weight"]
    for allow in (False, True):
        with pytest.raises(ValueError, match=r"only part of the text path.*presence_token"):
            load_weights(build_sam_from_config(texted.config), state, allow_untrained_text=allow)


def test_text_checkpoint_into_a_model_without_text_names_the_text_dim(tmp_path):
    _, texted = _pair()
    with pytest.raises(ValueError, match=r"holds a text path .*build it with text_dim=32"):
        load_weights(build_sam_from_config(CONFIGS["tiny_conv"]), texted.state_dict())


def test_text_checkpoint_round_trips_with_its_text_encoder(
    text_model, embedded_text_encoder, scene, tmp_path
):
    path = tmp_path / "text.pt"
    torch.save(text_checkpoint(text_model, embedded_text_encoder, {}, {"steps": 0}), path)
    model, encoder = load_text_model(path)
    a, b = SamPredictor(text_model, embedded_text_encoder), SamPredictor(model, encoder)
    a.set_image(scene.image)
    b.set_image(scene.image)
    for x, y in zip(a.predict(text="every plain object"), b.predict(text="every plain object"), strict=True):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="not a text model checkpoint"):
        load_text_model({"model": build_sam("tiny_conv").state_dict()})


def test_a_text_path_starts_on_metas_bare_checkpoint_only_with_its_config_named(tmp_path):
    from sam_core.text_model import text_model_from_checkpoint

    plain = build_sam("tiny")
    path = tmp_path / "bare.pth"
    torch.save(plain.state_dict(), path)  # as Meta's files are: a state dict, no config
    with pytest.raises(ValueError, match="records no config; name it"):
        text_model_from_checkpoint(path, text_dim=16)
    model = text_model_from_checkpoint(path, text_dim=16, config="tiny")
    assert model.prompt_encoder.text_dim == 16 and model.config.image_encoder == "vit"
    assert torch.equal(model.mask_decoder.iou_token.weight, plain.mask_decoder.iou_token.weight)


def test_predict_batch_takes_one_phrase_for_every_prompt_or_one_a_prompt(
    text_model, embedded_text_encoder, scene
):
    predictor = SamPredictor(text_model, text_encoder=embedded_text_encoder)
    predictor.set_image(scene.image)
    grid = np.array([[[60.0, 60.0]], [[128.0, 128.0]], [[200.0, 90.0]]])
    labels = np.ones((3, 1))
    masks, scores, logits, presence = predictor.predict_batch(
        grid, labels, text="every plain object", multimask_output=False
    )
    assert masks.shape == (3, 1, 256, 256) and presence.shape == (3,)
    assert ((presence >= 0) & (presence <= 1)).all()
    one = predictor.predict(grid[1], labels[1], text="every plain object", multimask_output=False)
    assert torch.allclose(logits[1], torch.from_numpy(one[2]), atol=1e-5)
    assert abs(float(presence[1]) - one[3]) < 1e-6
    alone = predictor.predict_batch(
        text=["the red ellipse", "every part inside the blue polygon"], multimask_output=False
    )
    assert alone[0].shape == (2, 1, 256, 256) and alone[3].shape == (2,)
    assert len(predictor.predict_batch(grid, labels)) == 3
    with pytest.raises(ValueError, match="2 phrases for 3 prompts"):
        predictor.predict_batch(grid, labels, text=["the red ellipse", "the blue polygon"])
    with pytest.raises(ValueError, match="text is empty"):
        predictor.predict_batch(text=["the red ellipse", ""])


def test_text_with_a_click_on_a_non_square_image_answers_in_its_frame(
    text_model, embedded_text_encoder, scene
):
    predictor = SamPredictor(text_model, text_encoder=embedded_text_encoder)
    image = scene.image[:180, :, :]  # 180 x 256: padded at the bottom for the encoder
    predictor.set_image(image)
    masks, scores, logits, presence = predictor.predict(
        point_coords=np.array([[200, 170]]), point_labels=np.array([1]), text="the plain object"
    )
    assert masks.shape == (1, 180, 256) and logits.shape == (1, 128, 128) and 0 <= presence <= 1
    with pytest.raises(ValueError, match="point_coords outside the 256 x 180"):
        predictor.predict(
            point_coords=np.array([[10, 200]]), point_labels=np.array([1]), text="the plain object"
        )
