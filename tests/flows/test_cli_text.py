"""`sam-engine segment IMAGE --text PHRASE` on a text model trained here for a few seconds (scripts/train_text.py's
trainer on one synthetic scene): the phrase's mask or its instances drawn over the image, the presence score
printed, an absent phrase said to be absent; a registered text model answers as the file does, and with no model
named the text path shipped with the embedded model does; a model without a text path and bad phrases are one
line and exit 2, with no overlay written."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app
from sam_core import SamPredictor
from sam_core.embedded import EMBEDDED_CHECKPOINT, EMBEDDED_TEXT_CHECKPOINT, embedded_config_name
from sam_core.synthetic import make_scene, split_seeds
from sam_core.text_instances import segment_phrase
from sam_core.text_train import TextTrainConfig, TextTrainer
from tasks.models import load_text_checkpoint

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]
# One training scene, clicks and boxes off: two dozen steps teach the text path this scene's phrases (seconds; on
# the 128-wide embedded model 12 steps left a one-object phrase's mask at IoU 0.47).
TINY_RUN = TextTrainConfig(
    steps=24,
    dataset_size=1,
    scenes_per_step=1,
    warmup_steps=2,
    lr=2e-3,
    point_probability=0.0,
    box_probability=0.0,
)
# The text path trains on the embedded model and registers under its config.
TEXT_CONFIG = embedded_config_name()
NO_TEXT_PATH = (
    "has no text path; train one with scripts/train_text.py and register its best.pt: "
    f"sam-engine model add NAME {TEXT_CONFIG} RUN_DIR/best.pt\n"
)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> dict:
    """The trained text checkpoint, a copy whose presence head always says absent, the training scene as a PNG
    and its phrases by kind."""
    root = tmp_path_factory.mktemp("text_run")
    trainer = TextTrainer(TINY_RUN)
    for _ in range(TINY_RUN.steps):
        trainer.step()
    checkpoint = trainer.checkpoint()
    torch.save(checkpoint, root / "text.pt")
    never = {**checkpoint, "model": dict(checkpoint["model"])}
    bias = "mask_decoder.presence_head.layers.2.bias"
    never["model"][bias] = torch.full_like(never["model"][bias], -50.0)  # sigmoid: 0 for every phrase
    torch.save(never, root / "never_present.pt")
    scene = make_scene(split_seeds("train", 1)[0])
    Image.fromarray(scene.image).save(root / "scene.png")
    kinds: dict[str, list[str]] = {}
    for text, kind, _ in trainer.cache[0].phrases:
        kinds.setdefault(kind, []).append(text)
    named = {text: indices for text, _, indices in trainer.cache[0].phrases}
    return {"root": root, "scene": scene, "named": named, **kinds}


def segment(text_run, tmp_path, phrase, *model):
    """`sam-engine segment SCENE --text PHRASE --out overlay.png MODEL...`: (the result, the overlay's path)."""
    out = tmp_path / "overlay.png"
    args = ["segment", str(text_run["root"] / "scene.png"), "--text", phrase, "--out", str(out), *model]
    return runner.invoke(app, args), out


def changed_pixels(text_run, overlay: Path) -> np.ndarray:
    """H x W bool: where the overlay differs from the image (the drawn masks)."""
    drawn = np.asarray(Image.open(overlay).convert("RGB"))
    assert drawn.shape == text_run["scene"].image.shape
    return (drawn != text_run["scene"].image).any(axis=-1)


def test_a_phrase_naming_one_object_draws_its_mask_and_prints_the_presence(text_run, tmp_path):
    phrase = text_run["one"][0]
    result, out = segment(text_run, tmp_path, phrase, "--checkpoint", str(text_run["root"] / "text.pt"))
    assert result.exit_code == 0, result.output
    presence, count, first, *rest = result.output.splitlines()
    assert presence.startswith("presence ") and presence.endswith(
        f": {phrase!r} judged present (threshold 0.5)"
    )
    assert 0.5 <= float(presence.split()[1].rstrip(":")) <= 1
    assert count == f"1 mask -> {out}" and not rest
    area = int(first.split()[1])
    assert first == f"  1: {area} px, predicted IoU {first.rsplit(' ', 1)[-1]}" and area > 0
    drawn = changed_pixels(text_run, out)
    assert abs(int(drawn.sum()) - area) <= 0.02 * area  # the overlay is the printed mask, tinted and outlined
    (index,) = text_run["named"][phrase]
    target = text_run["scene"].masks[index]
    # After a dozen steps on this scene the mask is the named object (IoU 0.96 when written), no other.
    assert (drawn & target).sum() / (drawn | target).sum() > 0.5


def test_an_every_phrase_gives_its_instances_one_line_each(text_run, tmp_path):
    phrase = next(p for p in text_run["part"] if p.startswith("every "))
    result, out = segment(text_run, tmp_path, phrase, "--checkpoint", str(text_run["root"] / "text.pt"))
    assert result.exit_code == 0, result.output
    presence, count, *masks = result.output.splitlines()
    assert "judged present" in presence
    n = len(masks)
    assert n >= 1 and count == f"{n} instance{'' if n == 1 else 's'} -> {out}"
    areas = [int(line.split()[1]) for line in masks]
    assert [line.split(":")[0] for line in masks] == [f"  {i}" for i in range(1, n + 1)]
    assert 0 < changed_pixels(text_run, out).sum() <= sum(areas) * 1.02


def test_an_absent_phrase_is_said_absent_and_the_overlay_is_the_image(text_run, tmp_path):
    phrase = text_run["one"][0]
    result, out = segment(
        text_run, tmp_path, phrase, "--checkpoint", str(text_run["root"] / "never_present.pt")
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == (f"presence 0.000: {phrase!r} judged absent (threshold 0.5)\n0 masks -> {out}\n")
    assert result.stderr == (
        f"no mask: the model judges {phrase!r} absent from the image (presence 0.000 < 0.5)\n"
    )
    assert not changed_pixels(text_run, out).any()


def test_a_registered_text_model_answers_as_its_file_and_a_wrong_config_is_named(text_run, tmp_path):
    store = ["--store", str(tmp_path / "store")]
    checkpoint = str(text_run["root"] / "text.pt")
    for version, config in (("text1", TEXT_CONFIG), ("typo", "tiny")):
        result = runner.invoke(app, ["model", "add", version, config, checkpoint, *store])
        assert result.exit_code == 0, result.output
    phrase = text_run["one"][0]
    by_file, out = segment(text_run, tmp_path, phrase, "--checkpoint", checkpoint)
    by_version, _ = segment(text_run, tmp_path, phrase, "-m", "text1", *store)
    assert by_version.exit_code == 0 and by_version.output == by_file.output
    wrong, _ = segment(text_run, tmp_path, phrase, "-m", "typo", *store)
    assert wrong.exit_code == 2
    assert wrong.output == (
        f"error: checkpoint {checkpoint} is a text model trained on config {TEXT_CONFIG!r}, registered as "
        f"'tiny'; register it with CONFIG {TEXT_CONFIG!r}\n"
    )


def test_with_no_model_named_the_shipped_text_path_answers_without_a_store(text_run, tmp_path, monkeypatch):
    monkeypatch.setenv("SAM_ENGINE_HOME", str(tmp_path / "home"))  # no store: the shipped model needs none
    phrase = text_run["one"][0]
    result, out = segment(text_run, tmp_path, phrase)
    assert result.exit_code == 0, result.output
    model, encoder = load_text_checkpoint(str(EMBEDDED_TEXT_CHECKPOINT))
    predictor = SamPredictor(model, text_encoder=encoder)
    predictor.set_image(text_run["scene"].image)
    expected = segment_phrase(predictor, phrase)
    presence, count, *lines = result.output.splitlines()
    assert presence.startswith(f"presence {expected.presence:.3f}: {phrase!r} judged")
    assert len(lines) == len(expected.masks) and count.endswith(f" -> {out}")
    if expected.masks:  # the overlay is the model's answer
        drawn = changed_pixels(text_run, out)
        assert abs(int(drawn.sum()) - int(expected.masks[0].sum())) <= 0.02 * expected.masks[0].sum()
    assert not (tmp_path / "home" / "store").exists()


def test_a_model_without_a_text_path_says_how_to_get_one(text_run, tmp_path, monkeypatch):
    monkeypatch.setenv("SAM_ENGINE_HOME", str(tmp_path / "home"))
    phrase = text_run["one"][0]
    store = ["--store", str(tmp_path / "store")]
    result = runner.invoke(app, ["model", "add", "plain", TEXT_CONFIG, str(EMBEDDED_CHECKPOINT), *store])
    assert result.exit_code == 0, result.output
    result, out = segment(text_run, tmp_path, phrase, "-m", "plain", *store)
    assert result.exit_code == 2 and result.output == f"error: model 'plain' {NO_TEXT_PATH}"
    result, out = segment(text_run, tmp_path, phrase, "--checkpoint", str(EMBEDDED_CHECKPOINT))
    assert (
        result.exit_code == 2 and result.output == f"error: checkpoint {EMBEDDED_CHECKPOINT} {NO_TEXT_PATH}"
    )
    assert not out.exists()


@pytest.mark.parametrize(
    "phrase, error",
    [
        ("", "text is empty: the text encoder needs a phrase"),
        ("   ", "text is empty (only whitespace): the text encoder needs a phrase"),
        (
            "every part inside the red striped rectangle " + "red " * 5,
            "text 'every part inside the red striped rectangle red red red red '... is 13 tokens long; the "
            "embedded text encoder takes at most 12 (its context length)",
        ),
        (
            "every car",
            "text 'every car': ['car'] not in the embedded text encoder's vocabulary of 24 words (",
        ),
    ],
)
def test_a_bad_phrase_is_one_line_and_exit_2(text_run, tmp_path, phrase, error):
    result, out = segment(text_run, tmp_path, phrase, "--checkpoint", str(text_run["root"] / "text.pt"))
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {error}") and result.output.count("\n") == 1, result.output
    assert not out.exists()


def test_non_utf8_bytes_from_the_command_line_are_one_line_and_exit_2(text_run, tmp_path):
    """Through the real entry point: argv bytes that are not UTF-8 reach Python as surrogate escapes."""
    out = tmp_path / "overlay.png"
    checkpoint = str(text_run["root"] / "text.pt")
    args = [sys.executable, "-m", "flows.cli", "segment", str(text_run["root"] / "scene.png")]
    args += ["--text", b"every \xff polygon", "--checkpoint", checkpoint, "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "SAM_ENGINE_HOME": str(tmp_path / "home"), "NO_COLOR": "1"}
    done = subprocess.run(args, capture_output=True, env=env, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        b"error: text is not valid UTF-8: byte 0xff at character 6 (a lone surrogate: bytes that were not "
        b"UTF-8, decoded with surrogateescape); pass text encoded as UTF-8\n"
    )
    assert not out.exists()


def test_checkpoint_without_text_or_with_a_version_is_refused(text_run, tmp_path):
    checkpoint = str(text_run["root"] / "text.pt")
    out = tmp_path / "overlay.png"
    image = str(text_run["root"] / "scene.png")
    result = runner.invoke(app, ["segment", image, "--checkpoint", checkpoint, "--out", str(out)])
    assert result.exit_code == 2
    assert result.output == (
        "error: --checkpoint is for a text model and needs --text; a plain checkpoint segments by -m\n"
    )
    result, out = segment(text_run, tmp_path, "every polygon", "--checkpoint", checkpoint, "-m", "latest")
    assert result.exit_code == 2 and result.output == "error: give -m VERSION or --checkpoint, not both\n"
    assert not out.exists()


def test_a_clip_text_model_reads_its_weights_from_clip_checkpoint_once_they_moved(text_run, tmp_path):
    open_clip = pytest.importorskip("open_clip")
    from sam_core.clip_text import ClipTextEncoder

    torch.manual_seed(1)
    trained_with = tmp_path / "elsewhere" / "open_clip_model.bin"
    trained_with.parent.mkdir()
    torch.save(open_clip.create_model("ViT-B-32").state_dict(), trained_with)
    trainer = TextTrainer(
        dataclasses.replace(TINY_RUN, steps=2),
        text_encoder=ClipTextEncoder("ViT-B-32", checkpoint=trained_with),
    )
    for _ in range(2):
        trainer.step()
    torch.save(trainer.checkpoint(), tmp_path / "clip_text.pt")
    here = tmp_path / "open_clip_model.bin"
    trained_with.rename(here)
    model = ["--checkpoint", str(tmp_path / "clip_text.pt")]
    result, out = segment(text_run, tmp_path, "a zebra crossing at dusk", *model)  # any words
    assert result.exit_code == 2 and not out.exists()
    assert result.output == (
        f"error: CLIP checkpoint {trained_with} is not a file here; nothing is downloaded: point at a local "
        "open_clip checkpoint of ViT-B-32\n"
    )
    result, out = segment(
        text_run, tmp_path, "a zebra crossing at dusk", *model, "--clip-checkpoint", str(here)
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("presence ") and out.exists()
    embedded = ["--checkpoint", str(text_run["root"] / "text.pt"), "--clip-checkpoint", str(here)]
    result, out = segment(text_run, tmp_path, text_run["one"][0], *embedded)
    assert result.exit_code == 2 and result.output == (
        f"error: checkpoint {text_run['root'] / 'text.pt'} reads text with the embedded text encoder, not "
        "CLIP's: no --clip-checkpoint\n"
    )
