"""Model versions: register checkpoints in the store's models table and load them by version.

A model version names one set of weights. ``embedded`` is always known: the small model shipped in
``sam_core/weights`` (its config name read from the checkpoint), whose text prompts the text path shipped beside
it answers (``load_text_model``: sam_core.embedded.EMBEDDED_TEXT_CHECKPOINT); ``latest`` means the newest
registered version. Every other version is a row of the models table: its ``config`` holds the SAM config name
(``{"name": "vit_b"}``) and ``checkpoint_uri`` the weights (any fsspec URL; Meta's ``sam_vit_*.pth`` files load
as they are).

Embeddings are keyed by the version that owns the image encoder (``embedding_version``). A version trained with
its encoder frozen (a decoder-only retrain, the demo's seed) records in ``config["embeddings_of"]`` the version
whose encoder it kept, after checking that the two encoders' weights are identical (``sam_core.checkpoint.encoder_digest``), and reads
and writes that version's embeddings: the images need not be encoded again, which is most of a round's compute.
Any other new version (one trained end to end, a checkpoint registered by hand) re-embeds.

A text model (a checkpoint of scripts/train_text.py: a Sam with a text path and its text encoder, see
sam_core.text_model) registers like any checkpoint, under the config it was trained on (the embedded model's,
``tiny_conv_slim`` today); the loader reads the checkpoint once and knows it by its contents. ``load_model`` gives its
Sam, which answers clicks and boxes as any model does; ``load_text_model`` gives it with its text encoder.
"""

from __future__ import annotations

import threading
from functools import lru_cache

from sam_core.build import CONFIGS, SamConfig, build_sam
from sam_core.checkpoint import encoder_digest, load_weights, read_checkpoint
from sam_core.embedded import EMBEDDED_CHECKPOINT, EMBEDDED_TEXT_CHECKPOINT, embedded_config_name
from sam_core.text_model import is_text_checkpoint, text_encoder_from_record, text_sam_from_checkpoint
from stores.fsio import check_key

EMBEDDED_VERSION = "embedded"
LATEST = "latest"


def get_text_model() -> str:
    """What a user without a text model does next (the CLI prints it after "has no text path"): the text path
    trains on the embedded model, so its best.pt registers under the embedded model's config."""
    return (
        "train one with scripts/train_text.py and register its best.pt: "
        f"sam-engine model add NAME {embedded_config_name()} RUN_DIR/best.pt"
    )


_LOCK = threading.Lock()


def resolve_version(store, model_version: str) -> str:
    """``latest`` -> the newest registered version (``embedded`` when none is); any other name unchanged."""
    if model_version != LATEST:
        return model_version
    models = store.models()
    if models.empty:
        return EMBEDDED_VERSION
    return str(models.sort_values("created_at", kind="stable")["model_version"].iloc[-1])


def model_row(store, model_version: str) -> dict:
    """The models-table row of ``model_version`` as a dict. Raises ValueError naming the known versions."""
    if model_version == EMBEDDED_VERSION:
        return {
            "model_version": EMBEDDED_VERSION,
            "parent_version": None,
            "config": {"name": embedded_config_name()},
            "checkpoint_uri": str(EMBEDDED_CHECKPOINT),
            "trained_on_round": None,
            "metrics": {},
        }
    models = store.models()
    rows = models[models["model_version"] == model_version]
    if rows.empty:
        known = sorted({EMBEDDED_VERSION, *models["model_version"]})
        raise ValueError(
            f"unknown model_version {model_version!r} in store {store.url}; known versions: {known}"
        )
    return rows.iloc[-1].to_dict()


def embedding_version(store, model_version: str) -> str:
    """The version whose stored embeddings ``model_version`` uses: the one whose image encoder it kept
    (``config["embeddings_of"]``), or itself. An unregistered name is its own key (the ML backend may label a
    model the store does not know)."""
    try:
        config = model_row(store, model_version)["config"] or {}
    except ValueError:  # not registered
        return model_version
    return str(config.get("embeddings_of") or model_version)


def cached_embedding(store, image_id: str, model_version: str, embeddings: str | None = None):
    """The stored C x H x W embedding of ``image_id`` for ``model_version`` (kept under ``embeddings`` when its
    encoder is another version's). KeyError naming the image and the versions when it was not embedded."""
    key = embeddings or model_version
    try:
        return store.get_embedding(image_id, key)
    except KeyError:
        under = f" (its encoder's embeddings are kept under {key!r})" if key != model_version else ""
        raise KeyError(
            f"image {image_id} has no embedding for model {model_version}{under}: run embed first"
        ) from None


def shared_embeddings(store, parent_version: str, state: dict) -> str | None:
    """The embedding version a new model with ``state`` (a state dict) may share: its parent's, when the two
    image encoders are identical; else None (the new version must re-embed)."""
    parent = read_checkpoint(model_row(store, parent_version)["checkpoint_uri"])["model"]
    if encoder_digest(parent) != encoder_digest(state):
        return None
    return embedding_version(store, parent_version)


def check_model(store, model_version: str) -> dict:
    """Fail fast: the version is registered and its checkpoint file exists. Returns the row."""
    row = model_row(store, model_version)
    check_checkpoint(row["checkpoint_uri"], model_version)
    return row


def check_new_model(model_version: str, config_name: str) -> None:
    """ValueError unless ``model_version`` may name a new row and ``config_name`` is a SAM config; writes nothing."""
    if config_name not in CONFIGS:
        raise ValueError(f"unknown SAM config {config_name!r}; choose one of {sorted(CONFIGS)}")
    if model_version in (EMBEDDED_VERSION, LATEST):
        raise ValueError(
            f"model_version {model_version!r} is reserved ({EMBEDDED_VERSION}: the shipped model, "
            f"{LATEST}: the newest registered one)"
        )
    check_key("model_version", model_version)


def check_checkpoint(uri: str, model_version: str) -> None:
    """FileNotFoundError naming ``uri`` when no checkpoint file is there (any fsspec URL or path)."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)
    if not fs.exists(path):
        raise FileNotFoundError(f"model {model_version!r}: checkpoint {uri} does not exist")
    if fs.isdir(path):
        raise IsADirectoryError(
            f"model {model_version!r}: checkpoint {uri} is a folder, not a checkpoint file"
        )


def register_model(
    store,
    model_version: str,
    config_name: str,
    checkpoint_uri: str,
    parent_version: str | None = None,
    trained_on_round: int | None = None,
    metrics: dict | None = None,
    extra_config: dict | None = None,
) -> dict:
    """Add (or replace) a models-table row; returns it."""
    check_new_model(model_version, config_name)
    row = {
        "model_version": model_version,
        "parent_version": parent_version,
        "config": {"name": config_name, **(extra_config or {})},
        "checkpoint_uri": checkpoint_uri,
        "trained_on_round": trained_on_round,
        "metrics": metrics or {},
    }
    store.write_model(row)
    return row


def load_model(store, model_version: str, device: str = "cpu"):
    """The ``Sam`` of ``model_version`` in eval mode on ``device``, cached per process (by store, version); a
    text model's with its text path."""
    row = model_row(store, model_version)
    return _load_cached(row["config"]["name"], row["checkpoint_uri"], device)[0]


def ships_text_path(model_version: str) -> bool:
    """Whether ``model_version`` is the shipped model and its text path is shipped beside it (then
    ``load_text_model`` gives it; ``load_model`` gives the same clicks and boxes without it)."""
    return model_version == EMBEDDED_VERSION and EMBEDDED_TEXT_CHECKPOINT.exists()


def load_text_model(store, model_version: str, device: str = "cpu", clip_checkpoint: str | None = None):
    """(Sam, text encoder) of a registered text model, both in eval mode on ``device``. ValueError naming the
    version and how to get a text model when its checkpoint has none."""
    row = model_row(store, model_version)
    label = f"model {model_version!r}"
    uri = row["checkpoint_uri"]
    if ships_text_path(model_version):
        uri = str(EMBEDDED_TEXT_CHECKPOINT)  # the shipped text path on top of it: the same clicks and boxes
    return load_text_checkpoint(uri, row["config"]["name"], label, device, clip_checkpoint)


def load_text_checkpoint(
    checkpoint_uri: str,
    config_name: str | None = None,
    label: str | None = None,
    device: str = "cpu",
    clip_checkpoint: str | None = None,
):
    """(Sam, text encoder) of a text checkpoint (path or fsspec URL), registered or not; ``config_name``: the
    config it is registered under (None: not registered, the checkpoint's own); ``clip_checkpoint``: a CLIP text
    model's open_clip weights here (default: the file its checkpoint names). ValueError naming ``label``
    (default: the checkpoint) when the checkpoint has no text path."""
    model, record = _load_cached(config_name, checkpoint_uri, device)
    label = label or f"checkpoint {checkpoint_uri}"
    if record is None:
        raise ValueError(f"{label} has no text path; {get_text_model()}")
    if clip_checkpoint is not None and record["kind"] != "clip":
        raise ValueError(
            f"{label} reads text with the {record['kind']} text encoder, not CLIP's: no --clip-checkpoint"
        )
    # Not cached with the model: CLIP's tower is large and only text prompts need it.
    return model, text_encoder_from_record(record, clip_checkpoint).to(device).eval()


@lru_cache(maxsize=4)
def _load_cached(config_name: str | None, checkpoint_uri: str, device: str):
    """(Sam, the checkpoint's text-encoder record or None), the checkpoint read once. ``config_name`` None
    (an unregistered file asked for its text path): a plain checkpoint gives (None, None) and is not built."""
    with _LOCK:  # concurrent task threads must not build the same model twice
        ckpt = read_checkpoint(checkpoint_uri)
        if is_text_checkpoint(ckpt):
            _check_text_config(ckpt, config_name, checkpoint_uri)
            model, record = text_sam_from_checkpoint(ckpt, checkpoint_uri), ckpt["text_encoder"]
        elif config_name is None:
            return None, None
        else:
            model, record = build_sam(config_name), None
            load_weights(model, ckpt)
    return model.to(device).eval(), record


def _check_text_config(ckpt: dict, config_name: str | None, checkpoint_uri: str) -> None:
    """A text checkpoint records its whole config; the name it is registered under must be that config without
    the text path, or a typo in ``model add`` would go unnoticed."""
    if config_name is None:
        return
    recorded = SamConfig.from_dict(ckpt["sam_config"])
    base = CONFIGS.get(config_name)
    if base is None or recorded.without_text() != base.without_text():
        trained_on = [
            repr(name) for name, cfg in CONFIGS.items() if recorded.without_text() == cfg.without_text()
        ]
        raise ValueError(
            f"checkpoint {checkpoint_uri} is a text model trained on config "
            f"{trained_on[0] if trained_on else 'none of ' + str(sorted(CONFIGS))}, registered as {config_name!r}"
            + (f"; register it with CONFIG {trained_on[0]}" if trained_on else "")
        )
