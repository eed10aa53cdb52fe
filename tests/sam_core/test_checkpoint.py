"""Checkpoints written by Meta's reference load strictly into ours; bad checkpoints get clear errors."""

from __future__ import annotations

import os
import pickle

import fsspec
import pytest
import torch

from sam_core import build_sam, build_sam_from_config
from sam_core.build import CONFIGS, SamConfig
from sam_core.checkpoint import check_state_dict


def test_reference_vit_b_checkpoint_loads_strictly(reference_and_ours, tmp_path):
    reference, _ = reference_and_ours
    path = tmp_path / "sam_vit_b_random.pth"
    torch.save(reference.state_dict(), path)
    model = build_sam("vit_b", checkpoint=str(path))
    loaded = model.state_dict()
    for name, tensor in reference.state_dict().items():
        assert torch.equal(loaded[name], tensor), name


@pytest.mark.parametrize("name", ["vit_l", "vit_h"])
def test_reference_large_configs_have_our_names_and_shapes(name):
    from segment_anything import sam_model_registry

    with torch.device("meta"):
        reference = sam_model_registry[name]()
        ours = build_sam_from_config(CONFIGS[name])
    ref_shapes = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == ref_shapes
    check_state_dict(ours, reference.state_dict())  # the strict check load_checkpoint runs before loading


def test_wrapped_checkpoint_with_metadata_loads_from_an_fsspec_url(tiny_model):
    state = {"model": tiny_model.state_dict(), "config": CONFIGS["tiny"].to_dict(), "model_version": "r1"}
    with fsspec.open("memory://ckpt/tiny.pt", "wb") as f:
        torch.save(state, f)
    model = build_sam("tiny", checkpoint="memory://ckpt/tiny.pt")
    assert torch.equal(model.mask_decoder.iou_token.weight, tiny_model.mask_decoder.iou_token.weight)


def test_half_precision_checkpoint_loads_as_float32(tiny_model, tmp_path):
    path = tmp_path / "half.pt"
    torch.save({"model": {k: v.half() for k, v in tiny_model.state_dict().items()}, "metadata": {}}, path)
    model = build_sam("tiny", checkpoint=str(path))
    weight = model.mask_decoder.iou_token.weight
    assert weight.dtype == torch.float32
    assert torch.equal(weight, tiny_model.mask_decoder.iou_token.weight.half().float())


def test_checkpoint_of_another_architecture_names_key_and_shapes(tiny_model, tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(tiny_model.state_dict(), path)
    with pytest.raises(
        ValueError, match=r"image_encoder\.pos_embed has shape \(1, 32, 32, 192\).*\(1, 64, 64, 768\)"
    ):
        build_sam("vit_b", checkpoint=str(path))


def test_missing_and_extra_keys_are_listed(tiny_model, tmp_path):
    state = dict(tiny_model.state_dict())
    del state["mask_decoder.iou_token.weight"]
    state["mask_decoder.surprise"] = torch.zeros(1)
    path = tmp_path / "odd.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"1 missing keys.*iou_token.*1 unexpected keys.*surprise"):
        build_sam("tiny", checkpoint=str(path))


def test_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a checkpoint at all\n")
    with pytest.raises(ValueError, match="notes.txt: not a PyTorch checkpoint"):
        build_sam("tiny", checkpoint=str(path))


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {"x": _RunsCode()}}, path)
    with pytest.raises(ValueError, match="refused.*run code"):
        build_sam("tiny", checkpoint=str(path))
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps(_RunsCode()))
    with pytest.raises(ValueError, match="refused"):
        build_sam("tiny", checkpoint=str(raw))


def test_unknown_config_name_is_refused():
    with pytest.raises(ValueError, match="unknown SAM config 'vit_x'"):
        build_sam("vit_x")


def test_config_round_trips_through_a_plain_dict():
    cfg = CONFIGS["tiny"]
    assert SamConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown SamConfig fields"):
        SamConfig.from_dict({"bogus": 1})
