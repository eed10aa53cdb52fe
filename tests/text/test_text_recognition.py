"""The mask recognizer of the text path (sam_core.text_recognition): which of the image's masks a phrase names.
Its descriptors, its candidates, its checkpoint rule, its training, and the predictor that answers text alone with
the best-scored masks (from set_image, or an embedding from the store with its image)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from sam_core import SamPredictor, mask_utils, text_recognition
from sam_core.checkpoint import load_weights
from sam_core.embedded import load_embedded
from sam_core.prompts import farthest_point, mask_to_box
from sam_core.synthetic import make_scene, split_seeds
from sam_core.text_instances import find_instances, recognized_masks, segment_phrase
from sam_core.text_model import load_text_model, text_model_from_checkpoint
from sam_core.text_recognition import (
    DESCRIPTOR_DIM,
    OWN_FEATURES,
    QUALITY_FEATURES,
    STABILITY_OFFSET,
    Candidates,
    MaskRecognizer,
    candidate_masks,
    enclosing,
    mask_descriptors,
    outer_candidates,
)
from sam_core.text_train import TextTrainConfig, TextTrainer

ONE_SCENE = dict(dataset_size=1, scenes_per_step=1, warmup_steps=2, lr=3e-3, phrases_per_scene=12)
PHRASE = "every polygon"


@pytest.fixture(scope="module")
def recognizer_trainer():
    """A recognizer text model trained 160 steps on one training scene (its phrases at 6 per kind), the decoder
    frozen as the recipe has it (with the descriptors of colour and texture read inside the mask, 120 steps left
    "the rectangle" on the ellipse)."""
    config = TextTrainConfig(
        steps=160, phrases_per_kind=6, point_box_probability=0.6, recognizer_width=32, decoder_lr_scale=0.0,
        **ONE_SCENE,
    )  # fmt: skip
    trainer = TextTrainer(config)
    history = [trainer.step() for _ in range(config.steps)]
    trainer.model.eval()
    trainer.text_encoder.eval()
    return trainer, history


@pytest.fixture(scope="module")
def trained_scene():
    return make_scene(split_seeds("train", 1)[0])


def _square_and_disc():
    """A 100 x 100 image: a red square with a small blue disc inside it, and a green ellipse beside."""
    image = np.full((100, 100, 3), 128, np.uint8)
    square, disc, ellipse = (np.zeros((100, 100), np.uint8) for _ in range(3))
    cv2.rectangle(square, (5, 5), (55, 55), 1, -1)
    cv2.circle(disc, (30, 30), 8, 1, -1)
    cv2.ellipse(ellipse, (78, 70), (15, 25), 0, 0, 360, 1, -1)
    image[square > 0] = (200, 35, 35)
    image[disc > 0] = (45, 70, 205)
    image[ellipse > 0] = (50, 165, 55)
    return image, [square > 0, disc > 0, ellipse > 0]


def test_descriptors_tell_colour_shape_and_what_encloses_a_mask():
    image, masks = _square_and_disc()
    assert enclosing(masks) == [-1, 0, -1]
    d = mask_descriptors(image, masks)
    assert d.shape == (3, DESCRIPTOR_DIM) and np.isfinite(d).all()
    square, disc, ellipse = d
    # the square's colour is its own pixels' (red: Lab a > 0.4), not mixed with the blue disc inside it
    assert square[1] > 0.4 and square[4] < 0.1
    assert disc[2] < -0.3  # blue: Lab b far below 0
    rectangle_fill, ellipse_fill = 20, 17  # indices into the own features (see _shape)
    assert square[rectangle_fill] > 0.95 and ellipse[ellipse_fill] > 0.95 and ellipse[rectangle_fill] < 0.85
    # the disc carries its enclosing square's own features and the flag; the wholes carry zeros
    inside = 2 * OWN_FEATURES  # the flag
    assert np.array_equal(disc[OWN_FEATURES:inside], square[:OWN_FEATURES]) and disc[inside] == 1
    assert not square[OWN_FEATURES : inside + 1].any() and not ellipse[OWN_FEATURES : inside + 1].any()
    assert mask_descriptors(image, []).shape == (0, DESCRIPTOR_DIM)
    with pytest.raises(ValueError, match="masks are"):
        mask_descriptors(image[:50], masks)
    assert farthest_point(masks[1])[:2] == (30, 30) and tuple(mask_to_box(masks[0])) == (5, 5, 55, 55)


def test_a_part_is_described_with_the_whole_that_many_cuts_repeat_not_a_looser_cut_of_itself():
    """Candidates as a grid of clicks leaves them: the square whole in two near-identical cuts, the disc, and a
    looser cut of the disc (1.5x its area): the smallest mask enclosing the disc is that looser cut, but the one
    its descriptor describes is the square."""
    image, (square, disc, ellipse) = _square_and_disc()
    square_again = square.copy()
    square_again[5:7, 5:55] = False  # the same square less a 2 px strip
    looser = cv2.circle(np.zeros((100, 100), np.uint8), (30, 30), 10, 1, -1) > 0
    masks = [square, square_again, looser, disc, ellipse]  # largest first
    assert enclosing(masks)[3] == 2
    assert outer_candidates(masks) == [-1, -1, 0, 0, -1]  # two cuts of one square: neither encloses the other
    d = mask_descriptors(image, masks)
    assert (
        np.array_equal(d[3, OWN_FEATURES : 2 * OWN_FEATURES], d[0, :OWN_FEATURES])
        and d[3, 2 * OWN_FEATURES] == 1
    )
    assert outer_candidates([]) == [] and enclosing([]) == []


def _textured(kind: str, size: int = 120) -> tuple[np.ndarray, np.ndarray]:
    """A grey image with a 70 x 70 orange square painted flat, striped or checkered (amplitude 25, as
    sam_core.synthetic paints), and the square's mask."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    pattern = {
        "flat": np.zeros_like(xx),
        "striped": np.sin((xx * 0.8 + yy * 0.6) * 2 * np.pi / 12),
        "checkered": ((yy // 10 + xx // 10) % 2) * 2 - 1.0,
    }[kind]
    image = np.full((size, size, 3), 90.0, np.float32)
    mask = np.zeros((size, size), bool)
    mask[25:95, 25:95] = True
    image[mask] = (np.array([230.0, 130.0, 30.0]) + 25 * pattern[..., None])[mask]
    return np.clip(image, 0, 255).astype(np.uint8), mask


def test_a_speck_that_fits_no_ellipse_is_described():
    """Five pixels in a slanted column (a loose candidate of training scene 818): OpenCV fits them an ellipse of
    NaN and infinite size, which cv2.ellipse refuses; the descriptor gives it no ellipse fill instead."""
    image = np.full((256, 256, 3), 120, np.uint8)
    speck = np.zeros((256, 256), bool)
    speck[[136, 137, 137, 138, 138], [225, 224, 225, 224, 225]] = True
    d = mask_descriptors(image, [speck])
    assert d.shape == (1, DESCRIPTOR_DIM) and np.isfinite(d).all() and d[0, 17] == 0.0  # 17: ellipse fill


def test_texture_is_read_inside_the_mask_whatever_its_border():
    """Stripes run one way (coherence high), checkers do not; flat paint has no band energy. A candidate 2 px
    too large or too small reads nearly the same texture: the bands are computed inside the mask, off its
    border, so the step to the background does not leak in."""
    coherence, bands = 11, slice(6, 10)  # indices into the own features (see _appearance)
    d = {
        kind: mask_descriptors(_textured(kind)[0], [_textured(kind)[1]])[0]
        for kind in ("flat", "striped", "checkered")
    }
    assert d["striped"][coherence] > 0.7 and d["checkered"][coherence] < 0.3
    assert d["flat"][bands].max() < 0.05 < d["striped"][7] and d["checkered"][7] > 0.05
    for kind in ("striped", "checkered"):
        image, mask = _textured(kind)
        kernel = np.ones((5, 5), np.uint8)
        for other in (cv2.dilate(mask.astype(np.uint8), kernel), cv2.erode(mask.astype(np.uint8), kernel)):
            near = mask_descriptors(image, [other.astype(bool)])[0]
            assert np.abs(near[:13] - d[kind][:13]).max() < 0.1, (kind, near[:13] - d[kind][:13])


def test_the_recognizer_scores_every_phrase_against_every_mask_and_refuses_other_shapes():
    recognizer = MaskRecognizer(text_dim=16, width=8)
    logits = recognizer(torch.zeros(5, DESCRIPTOR_DIM), torch.zeros(3, 16))
    assert logits.shape == (3, 5)
    with pytest.raises(ValueError, match="text embeddings must be B x 16"):
        recognizer(torch.zeros(5, DESCRIPTOR_DIM), torch.zeros(3, 12))
    with pytest.raises(ValueError, match=f"descriptors must be K x {DESCRIPTOR_DIM}"):
        recognizer(torch.zeros(5, 7), torch.zeros(3, 16))


def test_candidates_are_the_embedded_models_masks_largest_first(trained_scene):
    predictor = SamPredictor(load_embedded())
    predictor.set_image(trained_scene.image)
    masks = candidate_masks(predictor)
    areas = [int(m.sum()) for m in masks]
    assert len(masks) >= len([lv for lv in trained_scene.levels if lv == 0]) and areas == sorted(areas)[::-1]
    assert all(m.shape == trained_scene.image.shape[:2] and m.dtype == bool for m in masks)
    best = [max(float((m & t).sum() / (m | t).sum()) for m in masks) for t in trained_scene.masks]
    assert np.mean(np.array(best) >= 0.5) >= 0.5  # most of the scene's objects and parts are among them


def test_a_candidates_descriptor_ends_with_its_predicted_iou_and_stability_and_ground_truth_with_ones(
    trained_scene,
):
    predictor = SamPredictor(load_embedded(), text_encoder=None)
    predictor.set_image(trained_scene.image)
    found = text_recognition.candidate_outputs(predictor)
    assert len(found.masks) == len(found.predicted_iou) == len(found.stability_score) > 3
    # The stability each was kept for, from the logits it is answered with: recomputed here, not read back.
    logits = predictor.upscale_logits(found.low_res_logits[:, None])[:, 0]
    recomputed = mask_utils.stability_score(logits, predictor.model.mask_threshold, STABILITY_OFFSET)
    assert torch.allclose(found.stability_score, recomputed)
    assert (found.stability_score >= text_recognition.CANDIDATE_STABILITY).all()
    assert len(set(found.predicted_iou.tolist())) > 1  # rated one by one, not a constant
    described = mask_descriptors(trained_scene.image, found.masks, found.quality())
    assert np.allclose(described[:, -QUALITY_FEATURES:], torch.stack([found.predicted_iou, recomputed], 1))
    plain = mask_descriptors(trained_scene.image, found.masks)  # the first stage's ground truth: exact masks
    assert np.array_equal(plain[:, :-QUALITY_FEATURES], described[:, :-QUALITY_FEATURES])
    assert (plain[:, -QUALITY_FEATURES:] == 1).all()
    with pytest.raises(ValueError, match=f"quality must be {len(found.masks)} x {QUALITY_FEATURES}"):
        mask_descriptors(trained_scene.image, found.masks, found.quality()[:, :1])


def test_a_recognizer_checkpoint_holds_it_and_one_without_it_is_refused_whole(recognizer_trainer, tmp_path):
    trainer, _ = recognizer_trainer
    checkpoint = trainer.checkpoint()
    keys = [k for k in checkpoint["model"] if k.startswith("prompt_encoder.text_recognizer.")]
    assert keys and checkpoint["sam_config"]["text_recognizer"] == 32
    path = tmp_path / "text.pt"
    torch.save(checkpoint, path)
    model, _ = load_text_model(path)
    for key in keys:
        assert torch.equal(model.state_dict()[key], checkpoint["model"][key])
    partial = {k: v for k, v in checkpoint["model"].items() if k not in keys}
    with pytest.raises(ValueError, match="only part of the text path"):
        load_weights(text_model_from_checkpoint(text_recognizer=32), {"model": partial})


def test_the_recognizer_learns_which_masks_the_phrases_of_its_scene_name(recognizer_trainer):
    trainer, history = recognizer_trainer
    losses = [h["recognizer"] for h in history]
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses
    assert np.mean([h["picked"] for h in history[-10:]]) >= 0.8  # the named mask scores best


def test_text_alone_answers_with_the_best_scored_candidates_and_presence_is_its_score(
    recognizer_trainer, trained_scene
):
    trainer, _ = recognizer_trainer
    predictor = SamPredictor(trainer.model, text_encoder=trainer.text_encoder)
    predictor.set_image(trained_scene.image)
    candidates, probabilities = predictor.score_candidates(PHRASE)
    assert len(candidates) == len(probabilities) >= 3
    logits = predictor.recognize(predictor.encode_text([PHRASE]))[0]
    ranked = torch.argsort(logits, descending=True).tolist()
    masks, scores, low_res, presence = predictor.predict(text=PHRASE)
    assert presence == pytest.approx(float(probabilities.max()), abs=1e-6)
    assert masks.shape == (1, *trained_scene.image.shape[:2]) and np.array_equal(
        masks[0], candidates[ranked[0]]
    )
    # Its low-res logits are the candidate's own: upscaled, they give the same mask; its score is the decoder's.
    upscaled = predictor.upscale_logits(torch.from_numpy(low_res)[None])[0, 0].numpy()
    assert np.array_equal(upscaled > predictor.model.mask_threshold, masks[0]) and 0.0 < scores[0] <= 1.5
    three, three_scores, _, _ = predictor.predict(text=PHRASE, multimask_output=True)
    assert len(three) == 3 and all(
        np.array_equal(m, candidates[k]) for m, k in zip(three, ranked, strict=False)
    )
    assert three_scores[0] == pytest.approx(scores[0])
    assert np.array_equal(predictor.predict(text=PHRASE, multimask_output=True, best_only=True)[0], masks)
    # With points or a box the text goes through the decoder, as a prompt of its own.
    asked = predictor.predict(
        np.array([farthest_point(candidates[ranked[0]])[:2]]), np.array([1]), mask_to_box(candidates[ranked[0]]),
        text=PHRASE,
    )  # fmt: skip
    assert asked[0].shape == masks.shape and not np.array_equal(asked[1], scores)
    named = recognized_masks(predictor, PHRASE)
    assert len(named) == int((probabilities >= 0.5).sum())


def test_text_alone_with_fewer_candidates_than_masks_asked_repeats_the_last(
    recognizer_trainer, trained_scene
):
    trainer, _ = recognizer_trainer
    predictor = SamPredictor(trainer.model, text_encoder=trainer.text_encoder)
    predictor.set_image(trained_scene.image)
    masks, descriptors = predictor.candidates()
    found = predictor._candidate_outputs  # two candidates left on the image
    predictor._candidates = (masks[:2], descriptors[:2])
    predictor._candidate_outputs = Candidates(
        masks[:2], found.predicted_iou[:2], found.low_res_logits[:2], found.stability_score[:2]
    )
    ranked = torch.argsort(predictor.recognize(predictor.encode_text([PHRASE]))[0], descending=True).tolist()
    three, scores, _, _ = predictor.predict(text=PHRASE, multimask_output=True)
    assert [next(k for k in range(2) if np.array_equal(m, masks[k])) for m in three] == [*ranked, ranked[-1]]
    assert scores[2] == scores[1]


def test_text_alone_on_an_image_without_candidates_is_judged_absent(recognizer_trainer, monkeypatch):
    trainer, _ = recognizer_trainer
    monkeypatch.setattr(text_recognition, "CANDIDATE_PRED_IOU", 2.0)  # no mask is rated that high
    predictor = SamPredictor(trainer.model, text_encoder=trainer.text_encoder)
    predictor.set_image(make_scene(split_seeds("val", 1)[0]).image)
    assert predictor.candidates()[0] == []
    masks, scores, _, presence = predictor.predict(text=PHRASE)
    assert masks.shape == (1, 256, 256) and presence < 1e-6
    answer = segment_phrase(predictor, "the red ellipse")
    assert not answer.masks and "absent" in answer.why_empty


def test_an_embedding_from_the_store_needs_its_image_and_then_answers_as_set_image(
    recognizer_trainer, trained_scene
):
    trainer, _ = recognizer_trainer
    predictor = SamPredictor(trainer.model, text_encoder=trainer.text_encoder)
    predictor.set_image(trained_scene.image)
    embedding = predictor.get_image_embedding().clone()
    direct = predictor.predict(text=PHRASE)
    instances = find_instances(predictor, PHRASE)
    size = trained_scene.image.shape[:2]
    predictor.set_embedding(embedding, size)
    with pytest.raises(ValueError, match=r"set_embedding\(embedding, size, image=image\)"):
        predictor.predict(text=PHRASE)
    assert predictor.predict(np.array([[40, 40]]), np.array([1]))[0].shape == (
        3,
        256,
        256,
    )  # clicks need none
    with pytest.raises(ValueError, match="image is 10 x 10 but original_size is"):
        predictor.set_embedding(embedding, size, image=np.zeros((10, 10, 3), np.uint8))
    predictor.set_embedding(embedding, size, image=trained_scene.image)
    again = predictor.predict(text=PHRASE)
    assert np.array_equal(again[0], direct[0]) and again[3] == pytest.approx(direct[3], abs=1e-6)
    found = find_instances(predictor, PHRASE)
    assert len(found[0]) == len(instances[0])
    assert all(np.array_equal(a, b) for a, b in zip(found[0], instances[0], strict=True))
    answer = segment_phrase(predictor, PHRASE, presence_threshold=0.0)
    assert answer.instances and (answer.masks or answer.why_empty)


def test_a_bgr_image_is_described_in_rgb(recognizer_trainer, trained_scene):
    """set_image(image, "BGR") gives the recognizer the same RGB pixels, so the same candidates and descriptors."""
    trainer, _ = recognizer_trainer
    answers = []
    for image, image_format in ((trained_scene.image, "RGB"), (trained_scene.image[..., ::-1].copy(), "BGR")):
        predictor = SamPredictor(trainer.model, text_encoder=trainer.text_encoder)
        predictor.set_image(image, image_format)
        answers.append(predictor.candidates())
    (rgb_masks, rgb_descriptors), (bgr_masks, bgr_descriptors) = answers
    assert len(rgb_masks) == len(bgr_masks) and all(map(np.array_equal, rgb_masks, bgr_masks))
    assert torch.equal(rgb_descriptors, bgr_descriptors)
