"""Build SAM from a named configuration and load checkpoints safely.

Configurations (`SamConfig`): "vit_b", "vit_l", "vit_h" are Meta's official ones (1024 px input, patch 16,
64 x 64 x 256 image embedding, 256 x 256 low-res masks). Ours, sized for a CPU: "tiny_conv", the embedded
default, swaps the ViT for a small convolutional encoder (sam_core.conv_encoder: 256 px input, stride 8, the same
32 x 32 x 256 embedding and decoder as "tiny"); "tiny" keeps SAM's ViT at 256 px input,
patch 8 (32 x 32 x 256 embedding, 128 x 128 low-res masks), ViT width 192, depth 6, 6 heads, window 8,
global blocks (2, 5), decoder MLP 1024 (prompt encoder and the rest of the decoder as official).
Tiny's size and cost, measured on this project's machine (AMD EPYC with AVX2, torch 2.14.1, float32):
6.57M parameters (image encoder 3.55M, prompt encoder 6k, mask decoder 3.01M); the encoder costs 6.9 GFLOP
per image; set_image on a 256 x 256 image takes about 160 ms and one click (the best mask at image
resolution) about 14 ms of single-thread CPU time. (Single-thread CPU time because the shared 2-core
machine's wall clock swings with its neighbours' load; vit_b on the same machine: see
benchmarks/bench_predictor.py.)

Checkpoint format: a file readable by `torch.load(weights_only=True)` (only tensors and plain containers,
never pickled code) holding either a bare state dict with the official names (Meta's sam_vit_*.pth files)
or a dict {"model": state_dict, ...} whose other keys are free metadata (sam_core.train writes "config" and
"metadata"). Tensors may be stored in half precision; they are cast to the model's dtype on loading. Keys
are matched strictly: missing, extra or mis-shaped entries are refused with a ValueError naming them.
"""

from __future__ import annotations

import dataclasses
import io
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .conv_encoder import ImageEncoderConv
from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .sam import PIXEL_MEAN, PIXEL_STD, Sam
from .transformer import TwoWayTransformer

IMAGE_ENCODERS = ("vit", "conv")


@dataclass
class SamConfig:
    """All the dimensions of a SAM model. Defaults are vit_b.

    image_encoder: "vit" (SAM's, the encoder_* and window fields apply) or "conv" (sam_core.conv_encoder, the
    conv_* fields apply; patch_size is then its stride, 8).
    """

    img_size: int = 1024
    patch_size: int = 16
    image_encoder: str = "vit"
    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    window_size: int = 14
    mlp_ratio: float = 4.0
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    conv_channels: tuple[int, ...] = (32, 64, 128, 256)
    conv_depths: tuple[int, ...] = (1, 2, 2)
    conv_attention_blocks: int = 2
    pixel_mean: tuple[float, ...] = field(default=PIXEL_MEAN)
    pixel_std: tuple[float, ...] = field(default=PIXEL_STD)

    @property
    def image_embedding_size(self) -> int:
        return self.img_size // self.patch_size

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (for the models registry and checkpoint metadata)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SamConfig:
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown SamConfig fields: {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


CONFIGS: dict[str, SamConfig] = {
    "vit_b": SamConfig(),
    "vit_l": SamConfig(
        encoder_embed_dim=1024,
        encoder_depth=24,
        encoder_num_heads=16,
        encoder_global_attn_indexes=(5, 11, 17, 23),
    ),
    "vit_h": SamConfig(
        encoder_embed_dim=1280,
        encoder_depth=32,
        encoder_num_heads=16,
        encoder_global_attn_indexes=(7, 15, 23, 31),
    ),
    "tiny": SamConfig(
        img_size=256,
        patch_size=8,
        encoder_embed_dim=192,
        encoder_depth=6,
        encoder_num_heads=6,
        encoder_global_attn_indexes=(2, 5),
        window_size=8,
        decoder_mlp_dim=1024,
    ),
    "tiny_conv": SamConfig(
        img_size=256,
        patch_size=8,
        image_encoder="conv",
        decoder_mlp_dim=1024,
    ),
}


def build_sam_from_config(cfg: SamConfig) -> Sam:
    """A freshly initialised Sam (eval mode) with the dimensions of cfg."""
    grid = cfg.image_embedding_size
    model = Sam(
        image_encoder=_image_encoder(cfg),
        prompt_encoder=PromptEncoder(
            embed_dim=cfg.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(cfg.img_size, cfg.img_size),
            mask_in_chans=cfg.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            transformer_dim=cfg.prompt_embed_dim,
            transformer=TwoWayTransformer(
                depth=cfg.decoder_depth,
                embedding_dim=cfg.prompt_embed_dim,
                num_heads=cfg.decoder_num_heads,
                mlp_dim=cfg.decoder_mlp_dim,
            ),
            num_multimask_outputs=cfg.num_multimask_outputs,
            iou_head_depth=cfg.iou_head_depth,
            iou_head_hidden_dim=cfg.iou_head_hidden_dim,
        ),
        pixel_mean=tuple(cfg.pixel_mean),
        pixel_std=tuple(cfg.pixel_std),
    )
    model.config = cfg
    return model.eval()


def _image_encoder(cfg: SamConfig) -> torch.nn.Module:
    if cfg.image_encoder == "conv":
        if cfg.patch_size != 8:
            raise ValueError(f"the conv image encoder has stride 8; set patch_size=8, not {cfg.patch_size}")
        return ImageEncoderConv(
            img_size=cfg.img_size,
            channels=tuple(cfg.conv_channels),
            depths=tuple(cfg.conv_depths),
            attention_blocks=cfg.conv_attention_blocks,
            out_chans=cfg.prompt_embed_dim,
        )
    if cfg.image_encoder != "vit":
        raise ValueError(f"unknown image_encoder {cfg.image_encoder!r}; choose one of {IMAGE_ENCODERS}")
    return ImageEncoderViT(
        img_size=cfg.img_size,
        patch_size=cfg.patch_size,
        embed_dim=cfg.encoder_embed_dim,
        depth=cfg.encoder_depth,
        num_heads=cfg.encoder_num_heads,
        mlp_ratio=cfg.mlp_ratio,
        out_chans=cfg.prompt_embed_dim,
        window_size=cfg.window_size,
        global_attn_indexes=tuple(cfg.encoder_global_attn_indexes),
    )


def build_sam(name: str, checkpoint: str | None = None) -> Sam:
    """Sam for a named config ("vit_b", "vit_l", "vit_h", "tiny", "tiny_conv"), optionally loading a checkpoint from a
    path or any fsspec URL (see the module docstring for the format)."""
    if name not in CONFIGS:
        raise ValueError(f"unknown SAM config {name!r}; choose one of {sorted(CONFIGS)}")
    model = build_sam_from_config(CONFIGS[name])
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, name=name)
    return model


def load_checkpoint_object(checkpoint: str | bytes) -> Any:
    """Whatever a checkpoint file holds (path, fsspec URL or raw bytes), read with torch.load(weights_only=True).

    Raises ValueError naming the file when it is not a checkpoint or is a pickle that would run code.
    """
    if isinstance(checkpoint, bytes | bytearray):
        data, checkpoint = bytes(checkpoint), "<checkpoint bytes>"
    else:
        import fsspec  # an import here keeps sam_core importable without fsspec for pure-tensor users

        with fsspec.open(str(checkpoint), "rb") as f:
            data = f.read()
    try:
        # TorchVersion is a str subclass that trainers store in metadata; allowing it keeps weights_only safe.
        with torch.serialization.safe_globals([torch.torch_version.TorchVersion]):
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's zip format starts with "PK", a binary pickle with the PROTO opcode 0x80; anything else
        # that the unpickler trips over is simply not a checkpoint.
        is_pickle = data[:2] == b"PK" or data[:1] == b"\x80" or "GLOBAL" in str(err)
        if "Weights only load failed" in str(err) and is_pickle:
            raise ValueError(
                f"{checkpoint}: refused, the file is a pickle that torch.load(weights_only=True) will not load: "
                f"it would import or run code ({_refusal_reason(err)}); only tensors and plain containers are allowed"
            ) from err
        raise ValueError(f"{checkpoint}: not a PyTorch checkpoint ({_first_line(err)})") from err
    except Exception as err:  # torch.load reports garbage as RuntimeError, KeyError, EOFError, ...
        raise ValueError(
            f"{checkpoint}: not a PyTorch checkpoint ({type(err).__name__}: {_first_line(err)})"
        ) from err


def read_checkpoint(checkpoint: str) -> dict[str, torch.Tensor]:
    """Read a state dict from a path or fsspec URL, unwrapping {"model": state_dict}.
    Raises ValueError naming the file when it is not a safe checkpoint."""
    loaded = load_checkpoint_object(checkpoint)
    if isinstance(loaded, Mapping) and isinstance(loaded.get("model"), Mapping):
        loaded = loaded["model"]
    if not isinstance(loaded, Mapping) or not loaded:
        raise ValueError(
            f"{checkpoint}: expected a state dict or {{'model': state_dict}}, got {type(loaded).__name__}"
        )
    not_tensors = [k for k, v in loaded.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(f"{checkpoint}: state dict entries that are not tensors: {not_tensors[:5]}")
    return dict(loaded)


def encoder_kind(state_dict: Mapping[str, Any]) -> str | None:
    """Which image encoder a state dict holds ("vit" or "conv"), read from its tensor names; None if neither."""
    if any(k.startswith("image_encoder.patch_embed.") for k in state_dict):
        return "vit"
    if any(k.startswith("image_encoder.stem.") for k in state_dict):
        return "conv"
    return None


def check_state_dict(
    model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> None:
    """Raise ValueError unless state_dict has exactly the model's keys with the model's shapes.

    A checkpoint of the other image encoder kind (ViT into conv or back) is refused first, naming both kinds."""
    expected = model.state_dict()
    held, wanted = encoder_kind(state_dict), encoder_kind(expected)
    if held is not None and wanted is not None and held != wanted:
        raise ValueError(
            f"{source}: holds a {held!r} image encoder but the model has a {wanted!r} image encoder; "
            f"build the model with a config whose image_encoder is {held!r} "
            f"(e.g. {'tiny_conv' if held == 'conv' else 'tiny / vit_b / vit_l / vit_h'})"
        )
    missing = [k for k in expected if k not in state_dict]
    extra = [k for k in state_dict if k not in expected]
    key_problems = []
    if missing:
        key_problems.append(f"{len(missing)} missing keys, e.g. {missing[:5]}")
    if extra:
        key_problems.append(f"{len(extra)} unexpected keys, e.g. {extra[:5]}")
    for key, tensor in expected.items():
        if key in state_dict and tuple(state_dict[key].shape) != tuple(tensor.shape):
            # A shape clash is the clearest sign of another architecture: report it first.
            also = f" (also {'; '.join(key_problems)})" if key_problems else ""
            raise ValueError(
                f"{source}: {key} has shape {tuple(state_dict[key].shape)} but the model expects "
                f"{tuple(tensor.shape)}; is it a checkpoint for another architecture (vit_b / vit_l / vit_h / tiny / "
                "tiny_conv)?" + also
            )
    if key_problems:
        raise ValueError(f"{source} does not match the model: " + "; ".join(key_problems))


def load_checkpoint(model: Sam, checkpoint: str, name: str | None = None) -> Sam:
    """Load a checkpoint (path or fsspec URL) strictly into model, after checking keys and shapes."""
    state_dict = read_checkpoint(checkpoint)
    source = f"{checkpoint}" + (f" (loading into {name})" if name else "")
    check_state_dict(model, state_dict, source)
    model.load_state_dict(state_dict, strict=True)
    return model


def _refusal_reason(err: BaseException) -> str:
    """The line of torch's weights-only error that says what was refused (e.g. "Unsupported global: ...")."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:
        if line.startswith(("Unsupported", "Trying to", "Can only")):
            return line
    return "unsupported pickle content"


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
