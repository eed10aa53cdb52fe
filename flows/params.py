"""Flow parameters as pydantic models: the Prefect UI shows each as a form, and bad values are refused when a run
is created, before any work starts.

Every stage flow takes the store URL, the round number, the model version that answers clicks and generates
masks, which images to work on, and the settings of its steps. Defaults run the demo's synthetic setup.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Literal

from pydantic import BaseModel, Field, create_model, field_validator, model_validator

from flows.stages import Stage
from sam_core.train import TrainConfig
from tasks.annotate import AnnotatorSettings
from tasks.autogen import AutogenSettings
from tasks.calibrate import CalibrationSettings
from tasks.filter import CONFIDENT, FilterSettings
from tasks.retrain import TRAIN_SOURCES
from tasks.settings import EngineSettings
from tasks.text_autogen import TextAutogenSettings


def _default_store() -> str:
    return EngineSettings.from_env().store_url


class EmbedSettings(BaseModel):
    """How the image encoder runs: a Ray Data actor pool (one GPU per actor where the cluster has GPUs)."""

    batch_size: int = Field(4, ge=1, le=256, description="images per encoder batch")
    actors: int = Field(
        1, ge=1, le=1024, description="encoder actors (capped at the cluster's GPUs or CPUs - 1)"
    )
    backend: Literal["ray", "local"] = Field("ray", description="'local' encodes in the flow's own process")
    dtype: Literal["float32", "float16"] = Field("float32", description="how embeddings are stored")


class ImageSelection(BaseModel):
    """Which of the store's images a stage works on."""

    split: str = Field("train", description="images of this split (evaluation splits are never annotated)")
    image_ids: list[str] | None = Field(
        None, description="only these images (default: every image of the split)"
    )
    max_images: int | None = Field(None, ge=1, description="at most this many (the first by image id)")
    offset: int = Field(
        0, ge=0, description="skip this many images first (successive rounds take new images)"
    )


class StageParams(BaseModel):
    """What every stage flow needs."""

    store: str = Field(
        default_factory=_default_store, description="store root URL (file://, s3://, memory://)"
    )
    round: int = Field(1, ge=0, description="the round these masks belong to")
    model_version: str = Field(
        "embedded", min_length=1, description="model that answers clicks / makes masks"
    )
    images: ImageSelection = Field(default_factory=ImageSelection)
    ingest: list[str] = Field(
        default_factory=list, description="image URIs, folders or globs to register first"
    )
    shard_size: int = Field(8, ge=1, le=10_000, description="images per shard (unit of work and of writing)")
    embed: EmbedSettings = Field(default_factory=EmbedSettings)
    overlay_images: int = Field(3, ge=0, le=20, description="overlays in the run's markdown report")

    def stage_annotator(self) -> AnnotatorSettings | None:
        """The annotator the stage asks for masks; None where no one annotates."""
        return None

    def stage_filters(self) -> dict[str, FilterSettings]:
        """The filters the stage applies to the model's automatic masks, by parameter name: one with a
        target_precision takes its thresholds from the model version's calibration."""
        return {}


class AssistedManualParams(StageParams):
    """Stage 1: people (or the simulated annotator) click, SAM answers."""

    annotator: AnnotatorSettings = Field(default_factory=AnnotatorSettings)

    def stage_annotator(self) -> AnnotatorSettings:
        return self.annotator


class SemiAutomaticParams(StageParams):
    """Stage 2: confident automatic masks are pre-filled; the annotator adds the missing objects."""

    annotator: AnnotatorSettings = Field(default_factory=AnnotatorSettings)
    autogen: AutogenSettings = Field(default_factory=AutogenSettings)
    confident: FilterSettings = Field(default_factory=lambda: CONFIDENT.model_copy())

    def stage_annotator(self) -> AnnotatorSettings:
        return self.annotator

    def stage_filters(self) -> dict[str, FilterSettings]:
        return {"confident": self.confident}


class FullyAutomaticParams(StageParams):
    """Stage 3: a grid of point prompts per image, filtered masks kept without people; or, with ``text``, every
    instance of a phrase (a text model version, tasks.text_autogen)."""

    autogen: AutogenSettings = Field(default_factory=AutogenSettings)
    filter: FilterSettings = Field(default_factory=FilterSettings)
    text: str | None = Field(
        None,
        description="find every instance of this phrase (e.g. 'every red ring') instead of prompting a grid; "
        "needs a text model version",
    )

    @field_validator("text")
    @classmethod
    def _a_phrase(cls, text: str | None) -> str | None:
        return None if text is None else TextAutogenSettings(phrase=text).phrase

    def text_settings(self) -> TextAutogenSettings | None:
        """The text stage's settings, None without a phrase (the grid runs)."""
        return None if self.text is None else TextAutogenSettings(phrase=self.text)

    def stage_filters(self) -> dict[str, FilterSettings]:
        return {"filter": self.filter}


TRAIN_KNOBS = (
    "steps",
    "masks_per_image",
    "lr",
    "weight_decay",
    "freeze_image_encoder",
    "cache_embeddings",
    "encoder_lr_scale",
    "freeze_norm_stats",
    "focal_weight",
    "dice_weight",
    "pixel_loss",
    "box_probability",
    "background_points",
    "iou_target",
    "iou_loss_weight",
    "correction_points",
    "no_point_iterations",
    "seed",
)
"""The knobs of sam_core.train.TrainConfig that a retrain's form shows; each one's type, default, bounds and
help are TrainConfig's."""


def recipe_fields(recipe: type, names: tuple[str, ...]) -> dict:
    """{name: (type, pydantic Field)} of the named fields of a dataclass whose fields carry their help and
    bounds in their metadata (sam_core.train.knob): the pydantic form of a recipe, restating nothing."""
    hints = typing.get_type_hints(recipe)
    fields = {f.name: f for f in dataclasses.fields(recipe)}
    out = {}
    for name in names:
        meta = dict(fields[name].metadata)
        out[name] = (hints[name], Field(fields[name].default, description=meta.pop("doc", None), **meta))
    return out


TrainRecipeForm = create_model(
    "TrainRecipeForm",
    __doc__="The training recipe's knobs (sam_core.train.TrainConfig) that a retrain exposes.",
    **recipe_fields(TrainConfig, TRAIN_KNOBS),
)


class TrainSettings(TrainRecipeForm):
    """How a retrain runs (SAM's interactive training, see sam_core.train): the recipe's knobs, and what the
    retrain learns from and on how many workers."""

    sources: list[Literal["human", "model", "auto"]] = Field(
        default_factory=lambda: list(TRAIN_SOURCES), description="mask sources to train on"
    )
    workers: int = Field(
        1, ge=1, le=1024, description="Ray Train workers (one GPU each where there are GPUs)"
    )
    replay_split: str | None = Field(
        None,
        description="also train on this split's images (a labelled set the parent learnt from) so that a round's "
        "few masks do not make the model forget it; their masks come from replay_ground_truth",
    )
    replay_ground_truth: str | None = Field(None, description="COCO JSON of the replayed split's masks")

    @model_validator(mode="after")
    def _replay_needs_masks(self):
        if self.replay_split is not None and not self.replay_ground_truth:
            raise ValueError(f"replay_split={self.replay_split!r} needs replay_ground_truth (a COCO file)")
        return self

    def recipe(self) -> TrainConfig:
        """The training recipe these settings ask for (TrainConfig's defaults for the knobs the form hides)."""
        return TrainConfig(**self.model_dump(include=set(TRAIN_KNOBS)))

    def retrain_args(self) -> dict:
        """The keyword arguments of tasks.retrain.retrain that these settings give: the recipe and the rest."""
        return {"recipe": self.recipe(), **self.model_dump(exclude=set(TRAIN_KNOBS))}


class EvalSettings(BaseModel):
    """Held-out evaluation: the split's images, scored against a COCO file of their ground truth."""

    ground_truth: str = Field(
        ..., min_length=1, description="COCO JSON of the evaluation images' ground truth"
    )
    split: str = Field("test", description="evaluation images (never annotated by the stages)")
    max_images: int = Field(16, ge=1, le=100_000)
    max_clicks: int = Field(9, ge=1, le=20)
    max_masks_per_image: int | None = Field(
        None,
        ge=1,
        description="the clicks score at most this many ground-truth masks an image, the same ones for every "
        "version (None: all)",
    )
    amg_max_images: int | None = Field(
        None, ge=1, description="automatic precision/recall on the first this many images (None: all)"
    )
    autogen: AutogenSettings | None = Field(
        default_factory=AutogenSettings,
        description="generator settings for AMG precision/recall (None: skip)",
    )
    filter: FilterSettings | None = Field(
        None,
        description="the stage-3 filter on top of the generator (with target_precision: the evaluated "
        "version's calibrated thresholds, which the round's `calibration` must measure)",
    )


class RetrainParams(BaseModel):
    """Retrain a model on every accepted mask so far, register the new version, and evaluate it."""

    store: str = Field(default_factory=_default_store, description="store root URL")
    parent_version: str = Field(
        "latest", min_length=1, description="weights to start from ('latest': the newest)"
    )
    model_version: str | None = Field(
        None, description="name of the new version (default: <parent>-r<round>)"
    )
    round: int = Field(
        1, ge=0, description="train on masks of rounds up to this one; recorded as trained_on_round"
    )
    train: TrainSettings = Field(default_factory=TrainSettings)
    calibration: CalibrationSettings | None = Field(
        None, description="measure the new version's automatic-mask thresholds (None: skip)"
    )
    evaluation: EvalSettings | None = Field(None, description="evaluate the new version (None: skip)")


class RoundParams(StageParams):
    """One data-engine round: a chosen stage, then retrain and evaluate."""

    stage: Stage = Field("assisted_manual", description="which of the three stages to run")
    annotator: AnnotatorSettings = Field(default_factory=AnnotatorSettings, description="stages 1 and 2")
    autogen: AutogenSettings = Field(default_factory=AutogenSettings, description="stages 2 and 3")
    confident: FilterSettings = Field(default_factory=lambda: CONFIDENT.model_copy(), description="stage 2")
    filter: FilterSettings = Field(default_factory=FilterSettings, description="stage 3")
    retrain: TrainSettings | None = Field(default_factory=TrainSettings, description="None: no retrain")
    new_model_version: str | None = Field(
        None, description="name of the retrained version (default: r<round>)"
    )
    calibration: CalibrationSettings | None = Field(
        None,
        description="measure the new version's automatic-mask thresholds, for filters with a target_precision "
        "in the next round and in this round's evaluation (None: skip)",
    )
    evaluation: EvalSettings | None = Field(None, description="None: no evaluation")

    def stage_params(self) -> StageParams:
        """The parameters of the chosen stage's flow, taken from this round's."""
        kind = {
            "assisted_manual": AssistedManualParams,
            "semi_automatic": SemiAutomaticParams,
            "fully_automatic": FullyAutomaticParams,
        }[self.stage]
        fields = set(kind.model_fields)
        return kind(**{k: v for k, v in self if k in fields})

    def stage_annotator(self) -> AnnotatorSettings | None:
        return self.stage_params().stage_annotator()

    def stage_filters(self) -> dict[str, FilterSettings]:
        return self.stage_params().stage_filters()


class LabelStudioPushParams(StageParams):
    """A round's images to a Label Studio project, for people to label with SAM answering their clicks."""

    stage: Literal["assisted_manual", "semi_automatic"] = Field(
        "assisted_manual",
        description="assisted_manual: the images alone, people click; semi_automatic: the model's confident "
        "masks ride along as the prediction people start from",
    )
    project: str = Field("sam-engine", min_length=1, description="the project's title (made when missing)")
    labels: list[str] = Field(default_factory=lambda: ["object"], min_length=1, description="brush labels")
    labelstudio_url: str | None = Field(
        None,
        description="Label Studio's URL (token in SAM_ENGINE_LS_TOKEN); None: SAM_ENGINE_LS_URL, else the local "
        "server of `sam-engine labelstudio up`",
    )
    document_root: str | None = Field(
        None,
        description="the folder Label Studio serves local image files from (images must lie under it); None: "
        "the local server's",
    )
    ml_backend_url: str | None = Field(
        None,
        description="the SAM ML backend (`sam-engine labelstudio backend`) to connect to the project, its token "
        "in SAM_ENGINE_BACKEND_TOKEN; None: SAM_ENGINE_BACKEND_URL, else none is connected",
    )
    autogen: AutogenSettings = Field(default_factory=AutogenSettings, description="semi_automatic only")
    confident: FilterSettings = Field(
        default_factory=lambda: CONFIDENT.model_copy(), description="semi_automatic only"
    )

    def stage_filters(self) -> dict[str, FilterSettings]:
        return {"confident": self.confident} if self.stage == "semi_automatic" else {}


class LabelStudioSyncParams(BaseModel):
    """Pull what people did in a Label Studio project into the store's masks table."""

    store: str = Field(default_factory=_default_store, description="store root URL")
    project: str = Field("sam-engine", min_length=1, description="the project's title")
    labelstudio_url: str | None = Field(
        None, description="as for labelstudio-push: None is SAM_ENGINE_LS_URL, else the local server"
    )
    round: int = Field(
        1, ge=0, description="for tasks made by hand (a pushed task names its round and stage in its data)"
    )
    stage: Literal["assisted_manual", "semi_automatic"] = Field("assisted_manual", description="as for round")
    retrain_threshold: int | None = Field(
        20,
        ge=1,
        description="masks added, edited or deleted since the newest model was trained at which the synced "
        "event marks a retrain due (prefect.yaml's retrain trigger fires on it); None: never",
    )
    retries: int = Field(2, ge=0, le=10, description="reruns of a sync that failed (Label Studio down, 5xx)")
    retry_delay_seconds: float = Field(10.0, ge=0.0, le=3600.0)
