"""Text encoders: the embedded one over the scenes' words and CLIP's text tower (the real ViT-B-32 architecture
at random weights, since no weights can be fetched here); bad phrases are refused saying what is wrong."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam_core.phrases import VOCABULARY
from sam_core.text_encoder import EmbeddedTextEncoder, check_phrase

LONG = " ".join(["the"] * 12)  # 12 words + the summary token: one over the embedded context of 12


@pytest.mark.parametrize(
    ("text", "error", "match"),
    [
        ("", ValueError, "text is empty: the embedded text encoder needs a phrase"),
        ("  \t\n", ValueError, r"text is empty \(only whitespace\)"),
        (b"the red \xffellipse", ValueError, "not valid UTF-8: byte 0xff at offset 8"),
        (b"\xc3", ValueError, r"not valid UTF-8: byte 0xc3 at offset 0 \(unexpected end of data\)"),
        # what sys.argv holds for a non-UTF-8 command-line argument
        (b"the red \xffellipse".decode("utf-8", "surrogateescape"), ValueError, "byte 0xff at character 8"),
        ("the \ud800 ellipse", ValueError, "U\\+D800 at character 4"),
        (
            LONG,
            ValueError,
            "is 13 tokens long; the embedded text encoder takes at most 12 .its context length",
        ),
        ("the zebra", ValueError, r"\['zebra'\] not in the embedded text encoder's vocabulary of 24 words"),
        (42, TypeError, "text must be a str .or UTF-8 bytes., got int"),
        (None, TypeError, "got NoneType"),
    ],
)
def test_bad_phrases_are_refused_naming_the_problem(embedded_text_encoder, text, error, match):
    with pytest.raises(error, match=match):
        embedded_text_encoder.encode([text])


def test_a_single_phrase_not_in_a_list_is_refused(embedded_text_encoder):
    with pytest.raises(TypeError, match="wrap a single phrase in a list"):
        embedded_text_encoder.encode("the red ellipse")


def test_utf8_bytes_case_and_spacing_give_the_same_embedding(embedded_text_encoder):
    with torch.no_grad():
        a, b, c = embedded_text_encoder.encode(["the red ellipse", b"  The RED ellipse ", "the red ellipse."])
    assert torch.equal(a, b) and torch.equal(a, c)
    assert check_phrase("  naïve  ".encode()) == "naïve"


def test_embedded_encoder_reads_word_order(embedded_text_encoder):
    with torch.no_grad():
        a, b = embedded_text_encoder.encode(
            ["the part inside the red ellipse", "the red part inside the ellipse"]
        )
    assert a.shape == (128,)
    assert not torch.allclose(a, b)
    assert set(embedded_text_encoder.tokenizer.vocabulary) == set(VOCABULARY)


def test_embedded_encoder_round_trips_through_its_record(embedded_text_encoder):
    from sam_core.text_model import text_encoder_from_record

    copy = text_encoder_from_record(embedded_text_encoder.record())
    with torch.no_grad():
        assert torch.equal(
            copy.encode(["every plain rectangle"]), embedded_text_encoder.encode(["every plain rectangle"])
        )


# --- CLIP -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip_encoder():
    from sam_core.clip_text import ClipTextEncoder

    torch.manual_seed(0)
    return ClipTextEncoder("ViT-B-32")


def test_clip_encoder_is_the_official_text_tower(clip_encoder):
    clip = clip_encoder.clip
    assert (clip_encoder.embed_dim, clip_encoder.context_length) == (512, 77)
    assert clip.token_embedding.weight.shape == (49408, 512)
    assert len(clip.transformer.resblocks) == 12
    assert clip.visual is None
    assert not any(p.requires_grad for p in clip_encoder.parameters())
    with torch.no_grad():
        embeddings = clip_encoder.encode(["a photo of a dog", "every striped ellipse"])
    assert embeddings.shape == (2, 512)
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(2), atol=1e-5)


def test_clip_refuses_bad_phrases(clip_encoder):
    with pytest.raises(ValueError, match=r"tokens long; the CLIP ViT-B-32 text encoder takes at most 77"):
        clip_encoder.encode(["word " * 80])
    with pytest.raises(ValueError, match="not valid UTF-8"):
        clip_encoder.encode([b"\xfe\xff"])
    with pytest.raises(ValueError, match="text is empty"):
        clip_encoder.encode([" "])
    with torch.no_grad():
        clip_encoder.encode(["zebra crossing at dusk"])  # any words


def test_clip_loads_a_local_checkpoint_and_refuses_a_missing_one(clip_encoder, tmp_path):
    import open_clip

    from sam_core.clip_text import ClipTextEncoder

    torch.manual_seed(1)
    full = open_clip.create_model("ViT-B-32")
    path = tmp_path / "open_clip_model.bin"
    torch.save(full.state_dict(), path)
    loaded = ClipTextEncoder("ViT-B-32", checkpoint=path)
    assert torch.equal(loaded.clip.token_embedding.weight, full.token_embedding.weight)
    assert loaded.record() == {"kind": "clip", "config": {"model_name": "ViT-B-32", "checkpoint": str(path)}}
    # a text model on it goes through its checkpoint and back, CLIP rebuilt from the file the record names
    from sam_core import SamPredictor
    from sam_core.synthetic import make_scene
    from sam_core.text_model import load_text_model, text_checkpoint, text_model_from_checkpoint

    model = text_model_from_checkpoint(text_dim=512)
    torch.save(text_checkpoint(model, loaded, {}, {}), tmp_path / "text.pt")
    again, encoder = load_text_model(tmp_path / "text.pt")
    image = make_scene(3).image
    answers = []
    for m, e in ((model, loaded), (again, encoder)):
        predictor = SamPredictor(m, text_encoder=e)
        predictor.set_image(image)
        answers.append(predictor.predict(text="a striped ring"))
    for a, b in zip(*answers, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="CLIP text tower with random weights"):
        load_text_model(text_checkpoint(model, clip_encoder, {}, {}))
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        ClipTextEncoder("ViT-B-32", checkpoint=tmp_path / "nope.bin")
    with pytest.raises(ValueError, match="unknown open_clip model 'ViT-Q-99'"):
        ClipTextEncoder("ViT-Q-99")


def test_an_embedding_of_the_wrong_size_is_refused_naming_both():
    from sam_core.prompt_encoder import TextProjection

    with pytest.raises(ValueError, match=r"text embeddings must be B x 128, got \(1, 512\)"):
        TextProjection(128, 256, 2)(torch.zeros(1, 512))
    assert EmbeddedTextEncoder().context_length == 12
