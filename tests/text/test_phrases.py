"""Phrases about synthetic scenes: deterministic, their masks are what they name, absent ones name nothing; and
recording the attributes left the scenes themselves unchanged."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from sam_core.phrases import KINDS, VOCABULARY, colour_words, describe, scene_phrases
from sam_core.synthetic import make_scene

# sha256 (first 16 hex) of image + packed masks + hierarchy, computed before the generator recorded attributes.
SCENE_DIGESTS = {
    0: "b67da7082beb0cb8",
    7: "389a50dbf7a5e49f",
    1_000_003: "d4d4e78b0627caee",
    2_000_011: "e9d10d908ac9ba0d",
}


@pytest.mark.parametrize("seed", sorted(SCENE_DIGESTS))
def test_recording_attributes_left_every_scene_byte_identical(seed):
    s = make_scene(seed)
    digest = hashlib.sha256(s.image.tobytes())
    for m in s.masks:
        digest.update(np.packbits(m).tobytes())
    digest.update(str((s.parents, s.levels)).encode())
    assert digest.hexdigest()[:16] == SCENE_DIGESTS[seed]
    assert len(s.attributes) == len(s.masks)


def test_phrases_are_deterministic_by_seed_and_use_only_the_vocabulary():
    s = make_scene(11)
    a, b = scene_phrases(s, 11), scene_phrases(s, 11)
    assert [(p.text, p.indices) for p in a] == [(p.text, p.indices) for p in b]
    assert [p.text for p in scene_phrases(s, 12)] != [p.text for p in a]
    for p in a:
        assert set(p.text.split()) <= set(VOCABULARY)
        assert p.kind in KINDS


def _named(words: list[str], scene) -> list[int]:
    """The whole objects whose certain description has every word (an independent reading of a phrase)."""
    found = []
    for i, level in enumerate(scene.levels):
        if level != 0:
            continue
        d = describe(scene.attributes[i])
        have = {d.colour, d.texture, d.shape, "object"}
        if all(w in have for w in words):
            found.append(i)
    return found


def test_each_kind_names_what_its_masks_are():
    seen = set()
    for seed in range(1_000_000, 1_000_030):
        s = make_scene(seed)
        for p in scene_phrases(s, seed):
            seen.add(p.kind)
            words = p.text.split()
            assert [m is s.masks[i] for i, m in zip(p.indices, p.masks, strict=True)] == [True] * len(p.masks)
            if p.kind == "one":
                assert words[0] == "the" and _named(words[1:], s) == list(p.indices) and len(p.indices) == 1
            elif p.kind == "several":
                assert words[0] == "every" and _named(words[1:], s) == list(p.indices) and len(p.indices) >= 2
            elif p.kind == "part":
                owner = _named(words[4:], s)
                assert words[1:4] == ["part", "inside", "the"] and len(owner) == 1
                parts = [i for i in s.children(owner[0]) if s.levels[i] == 1]
                assert list(p.indices) == parts and (words[0] == "the") == (len(parts) == 1)
            else:
                assert p.indices == () and p.masks == () and not p.present
                descriptions = [describe(s.attributes[i]) for i, lv in enumerate(s.levels) if lv == 0]
                colour = next(
                    (
                        w
                        for w in words
                        if w
                        in {
                            "red",
                            "orange",
                            "yellow",
                            "green",
                            "cyan",
                            "blue",
                            "purple",
                            "pink",
                            "brown",
                            "white",
                            "grey",
                            "black",
                        }
                    ),
                    None,
                )
                for (
                    d
                ) in descriptions:  # no reading of the phrase fits any object, an ambiguous colour included
                    fits = all(w in {d.texture, d.shape, "object", colour} for w in words[1:])
                    assert not (fits and (colour is None or colour in d.colours)), (seed, p.text)
    assert seen == set(KINDS)


def test_colour_words_are_certain_only_far_from_a_border():
    assert colour_words((200, 35, 35))[0] == "red"
    assert colour_words((45, 70, 205))[0] == "blue"
    certain, possible = colour_words((215, 85, 35))  # between red and orange
    assert certain is None and {"red", "orange"} <= possible


def test_a_scene_without_attributes_is_refused():
    from sam_core.synthetic_cells import make_cell_scene

    with pytest.raises(ValueError, match="records no attributes"):
        scene_phrases(make_cell_scene(3), 3)
