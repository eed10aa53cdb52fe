import pytest
import torch

from sam_core.checkpoint import load_weights, read_checkpoint
from sam_core.train import TrainConfig, Trainer, build_model
from sam_core.train_data import SyntheticDataset


def test_checkpoint_roundtrip_in_fp16_loads_back_as_fp32(tmp_path):
    trainer = Trainer(TrainConfig(steps=1), dataset=[SyntheticDataset("train")[0]])
    path = tmp_path / "ckpt.pt"
    trainer.save(path, metrics={"miou@1": 0.5}, half=True)
    ckpt = read_checkpoint(path)
    assert ckpt["config"]["model"] == "tiny" and ckpt["metadata"]["metrics"] == {"miou@1": 0.5}
    assert all(v.dtype != torch.float16 for v in ckpt["model"].values())
    model = build_model("tiny")
    load_weights(model, path)
    key = "mask_decoder.iou_token.weight"
    assert torch.allclose(model.state_dict()[key], trainer.model.state_dict()[key], atol=1e-2)
    bare = tmp_path / "bare.pt"
    torch.save(trainer.model.state_dict(), bare)
    load_weights(build_model("tiny"), bare)


def test_checkpoint_of_another_config_is_a_clear_error():
    model = build_model("tiny")
    state = model.state_dict()
    state["image_encoder.pos_embed"] = torch.zeros((1, 64, 64, 192))
    del state["mask_decoder.iou_token.weight"]
    with pytest.raises(ValueError, match="another architecture"):
        load_weights(build_model("tiny"), {"model": state})
