"""Checkpoints: read them safely, check them against a model, load them into it.

Checkpoint format: a file readable by `torch.load(weights_only=True)` (only tensors and plain containers,
never pickled code) holding either a bare state dict with the official names (Meta's sam_vit_*.pth files)
or a dict {"model": state_dict, ...} whose other keys are free metadata (sam_core.train writes "config" and
"metadata"). Tensors may be stored in half precision; they are cast to the model's dtype on loading. Keys
are matched strictly: missing, extra or mis-shaped entries are refused with a ValueError naming them.

Text weights, one rule. A model built with a text path (SamConfig.text_dim > 0) has tensors no official or
embedded checkpoint holds: those whose names start with TEXT_PREFIXES (the prompt encoder's text projection and,
when built with one, its mask recognizer; the mask decoder's presence token and head). A checkpoint holds all of
them or none:
- all: loaded strictly like every other tensor;
- none, into a text model: refused, unless the caller passes ``allow_untrained_text=True`` (it means to train the
  text path): then every other tensor loads strictly and the text tensors keep their initialisation;
- some: refused, naming the missing ones (a damaged or foreign file is never half-loaded);
- text tensors into a model without a text path: refused, naming the text_dim to build with.

Two readers, for two uses: ``read_state_dict`` gives only the tensors (what ``build_sam`` loads), and
``read_checkpoint`` gives the trainer's whole dict {"model", "config", "metadata"} (what resuming, the model
registry and the embedded model read). Writing is ``atomic_save``'s (``sam_core.train.Trainer.save`` and the
training scripts call it): a temporary name, then a rename, so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from sam_core import shipped

# The mask recognizer's tensors (sam_core.text_recognition).
RECOGNIZER_PREFIX = "prompt_encoder.text_recognizer."
TEXT_PREFIXES = (
    "prompt_encoder.text_projection.",
    RECOGNIZER_PREFIX,
    "mask_decoder.presence_",
)


def text_keys(keys) -> list[str]:
    """The names among ``keys`` that belong to the text path (see TEXT_PREFIXES)."""
    return [k for k in keys if k.startswith(TEXT_PREFIXES)]


def atomic_save(obj, path: Path) -> None:
    """torch.save ``obj`` to ``path`` (a local file) under a temporary name, then rename it into place: a reader,
    or a run killed while writing, never sees half a checkpoint."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


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


def read_state_dict(checkpoint: str) -> dict[str, torch.Tensor]:
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


def read_checkpoint(source) -> dict:
    """A checkpoint as {"model": state_dict (fp32), "config": ..., "metadata": ...}.

    source: a path, an fsspec URL, raw bytes, or an already loaded dict. A bare state dict is accepted and
    wrapped; fp16-stored tensors come back as fp32; a text adapter (only a text path's tensors, on top of the
    embedded model: ``adapter_of``) comes back whole, its base's tensors added. Unsafe or foreign files raise
    ValueError (see load_checkpoint_object).
    """
    ckpt = source if isinstance(source, dict) else load_checkpoint_object(source)
    if not isinstance(ckpt, dict):
        raise ValueError(f"checkpoint {_name(source)} holds a {type(ckpt).__name__}, expected a dict")
    if "model" not in ckpt:
        ckpt = {"model": ckpt, "config": None, "metadata": {}}
    state = {
        k: (v.float() if torch.is_tensor(v) and v.dtype == torch.float16 else v)
        for k, v in ckpt["model"].items()
    }
    if ckpt.get("adapter_of"):
        return with_adapter_base({**ckpt, "model": state}, _name(source))
    return {**ckpt, "model": state}


# A text adapter names its base by one of these (the shipped models; the path is resolved when it is read, so
# the adapter moves with the package).
ADAPTER_BASES = ("embedded",)


def text_adapter(ckpt: dict, base: str = "embedded") -> dict:
    """A text checkpoint (sam_core.text_model's format, read by ``read_checkpoint``) as a text adapter: only its
    text path's tensors, with ``adapter_of`` naming the shipped model ``base`` its other tensors are exactly
    (checked, with that model's ``base_digest``, again when it is read). A text model trained on the embedded
    model is 25 MB whole; its text path and text encoder are about 2.5 MB. ValueError when a tensor other than
    the text path's differs from the base's."""
    if base not in ADAPTER_BASES:
        raise ValueError(f"unknown adapter base {base!r}; choose one of {ADAPTER_BASES}")
    state = ckpt["model"]
    text = set(text_keys(state))
    if not text:
        raise ValueError("not a text model: it holds no text path's tensors to ship as an adapter")
    held = _adapter_base_state(base)
    differing = [k for k in state if k not in text and (k not in held or not torch.equal(state[k], held[k]))]
    missing = sorted(set(held) - set(state))
    if differing or missing:
        raise ValueError(
            f"not an adapter of the {base} model: its weights differ from it at {(differing or missing)[:3]} "
            f"({len(differing)} differing, {len(missing)} missing); only a text path trained on top of it "
            "(its image encoder and decoder frozen) ships as an adapter"
        )
    return {
        **{k: v for k, v in ckpt.items() if k != "model"},
        "model": {k: state[k] for k in sorted(text)},
        "adapter_of": {"base": base, "digest": base_digest(held)},
    }


def with_adapter_base(ckpt: dict, source: str = "<in memory>") -> dict:
    """A text adapter (``text_adapter``) with its base's tensors added: the whole checkpoint. ValueError naming
    ``source`` when its base is unknown or is no longer the weights it was trained on (the base was retrained)."""
    record = ckpt["adapter_of"]
    base = record.get("base") if isinstance(record, dict) else None
    if base not in ADAPTER_BASES:
        raise ValueError(f"{source}: a text adapter of an unknown base {base!r}; known: {ADAPTER_BASES}")
    held = _adapter_base_state(base)
    if base_digest(held) != record.get("digest"):
        raise ValueError(
            f"{source}: a text adapter trained on another version of the {base} model than the one installed "
            "(its weights changed since): train the text path again on it (scripts/train_text.py, "
            "scripts/train_recognizer.py) and install that (scripts/train_text.py --install-from)"
        )
    rest = {k: v for k, v in ckpt.items() if k not in ("model", "adapter_of")}
    return {**rest, "model": {**held, **ckpt["model"]}}


def _adapter_base_state(base: str) -> dict:
    return read_checkpoint(shipped.EMBEDDED_CHECKPOINT)["model"]


def config_name(ckpt: dict, default: str = "tiny") -> str:
    """The sam_core.build.CONFIGS name a checkpoint dict records (the trainer's config "model"); ``default`` for
    a bare state dict, which records nothing."""
    return str((ckpt.get("config") or {}).get("model") or default)


def encoder_kind(state_dict: Mapping[str, Any]) -> str | None:
    """Which image encoder a state dict holds ("vit" or "conv"), read from its tensor names; None if neither."""
    if any(k.startswith("image_encoder.patch_embed.") for k in state_dict):
        return "vit"
    if any(k.startswith("image_encoder.stem.") for k in state_dict):
        return "conv"
    return None


def check_state_dict(
    model: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source: str = "checkpoint",
    allow_untrained_text: bool = False,
) -> None:
    """Raise ValueError unless state_dict has exactly the model's keys with the model's shapes, the text path
    aside as the module docstring's rule says (``allow_untrained_text``).

    A checkpoint of the other image encoder kind (ViT into conv or back) is refused first, naming both kinds."""
    expected = model.state_dict()
    _check_text_keys(expected, state_dict, source, allow_untrained_text)
    if allow_untrained_text and not text_keys(state_dict):
        expected = {k: v for k, v in expected.items() if k not in set(text_keys(expected))}
    held, wanted = encoder_kind(state_dict), encoder_kind(expected)
    if held is not None and wanted is not None and held != wanted:
        raise ValueError(
            f"{source}: holds a {held!r} image encoder but the model has a {wanted!r} image encoder; "
            f"build the model with a config whose image_encoder is {held!r} "
            f"(e.g. {'tiny_conv / tiny_conv_slim' if held == 'conv' else 'tiny / vit_b / vit_l / vit_h'})"
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
                "tiny_conv / tiny_conv_slim)?" + also
            )
    if key_problems:
        raise ValueError(f"{source} does not match the model: " + "; ".join(key_problems))


def _check_text_keys(expected: Mapping, state_dict: Mapping, source: str, allow_untrained_text: bool) -> None:
    wanted, held = text_keys(expected), text_keys(state_dict)
    if held and not wanted:
        dim = state_dict.get("prompt_encoder.text_projection.norm.weight")
        size = f"text_dim={dim.shape[0]}" if dim is not None else "text_dim > 0"
        raise ValueError(
            f"{source}: holds a text path ({len(held)} tensors, e.g. {held[:3]}) but the model was built without "
            f"one; build it with {size} (sam_core.text_model.load_text_model reads such a checkpoint whole)"
        )
    if wanted and not held and not allow_untrained_text:
        raise ValueError(
            f"{source}: holds no text path (a checkpoint of a model without text prompts, as Meta's and the "
            f"embedded model's are) but the model has one ({len(wanted)} tensors, e.g. {wanted[:2]}); pass "
            "allow_untrained_text=True to load everything else and start the text path from its initialisation "
            "(to train it), or build the model with text_dim=0"
        )
    if wanted and held:
        missing = sorted(set(wanted) - set(held))
        if missing:
            raise ValueError(
                f"{source}: holds only part of the text path: {len(missing)} text tensors missing, e.g. "
                f"{missing[:5]}; a checkpoint holds all of them or none"
            )


def _load_strict(model: torch.nn.Module, state_dict: Mapping, allow_untrained_text: bool) -> None:
    """load_state_dict(strict=True), the text tensors filled from the model itself when the rule lets a
    checkpoint without them in (check_state_dict has run)."""
    if allow_untrained_text and not text_keys(state_dict):
        own = model.state_dict()
        state_dict = {**{k: own[k] for k in text_keys(own)}, **state_dict}
    model.load_state_dict(state_dict, strict=True)


def load_checkpoint(
    model: torch.nn.Module, checkpoint: str, name: str | None = None, allow_untrained_text: bool = False
) -> torch.nn.Module:
    """Load a checkpoint (path or fsspec URL) strictly into model, after checking keys and shapes (the text
    path as the module docstring's rule says)."""
    state_dict = read_state_dict(checkpoint)
    source = f"{checkpoint}" + (f" (loading into {name})" if name else "")
    check_state_dict(model, state_dict, source, allow_untrained_text)
    _load_strict(model, state_dict, allow_untrained_text)
    return model


def load_weights(model: torch.nn.Module, source, allow_untrained_text: bool = False) -> dict:
    """Load a checkpoint into ``model`` strictly; a checkpoint of another config raises ValueError naming the
    mismatched tensors (the text path as the module docstring's rule says). Returns the checkpoint dict
    (config, metadata)."""
    ckpt = read_checkpoint(source)
    check_state_dict(model, ckpt["model"], f"checkpoint {_name(source)}", allow_untrained_text)
    _load_strict(model, ckpt["model"], allow_untrained_text)
    return ckpt


def encoder_digest(state: dict) -> str:
    """sha256 of a state dict's ``image_encoder.*`` tensors (names, shapes and values as float32, so an fp16-stored
    checkpoint and an fp32 copy of the same weights agree). ValueError when the state has no image encoder."""
    names = sorted(k for k in state if k.startswith("image_encoder."))
    if not names:
        raise ValueError("state dict has no image_encoder.* tensors")
    return _digest(state, names)


def base_digest(state: dict) -> str:
    """sha256 of every tensor of a state dict but the text path's (as ``encoder_digest``): what a text adapter
    (``with_adapter_base``) was trained on top of."""
    text = set(text_keys(state))
    return _digest(state, sorted(k for k in state if k not in text))


def _digest(state: dict, names: list[str]) -> str:
    digest = hashlib.sha256()
    for name in names:
        tensor = state[name].detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.to(torch.float32)
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


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


def _name(source) -> str:
    return "<in memory>" if isinstance(source, dict | bytes | bytearray) else str(source)
