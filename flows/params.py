"""Flow parameters as pydantic models: the Prefect UI shows each as a form, and bad values are refused when a run
is created, before any work starts.

Every stage flow takes the store URL, the round number, the model version that answers clicks and generates
masks, which images to work on, and the settings of its steps. Defaults run the demo's synthetic setup.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from flows.stages import Stage
from tasks.annotate import AnnotatorSettings
from tasks.autogen import AutogenSettings
from tasks.calibrate import CalibrationSettings
from tasks.filter import CONFIDENT, FilterSettings
from tasks.settings import EngineSettings


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


class AssistedManualParams(StageParams):
    """Stage 1: people (or the simulated annotator) click, SAM answers."""

    annotator: AnnotatorSettings = Field(default_factory=AnnotatorSettings)


class SemiAutomaticParams(StageParams):
    """Stage 2: confident automatic masks are pre-filled; the annotator adds the missing objects."""

    annotator: AnnotatorSettings = Field(default_factory=AnnotatorSettings)
    autogen: AutogenSettings = Field(default_factory=AutogenSettings)
    confident: FilterSettings = Field(default_factory=lambda: CONFIDENT.model_copy())


class FullyAutomaticParams(StageParams):
    """Stage 3: a grid of point prompts per image, filtered masks kept without people."""

    autogen: AutogenSettings = Field(default_factory=AutogenSettings)
    filter: FilterSettings = Field(default_factory=FilterSettings)


class TrainSettings(BaseModel):
    """How a retrain runs (SAM's interactive training, see sam_core.train)."""

    sources: list[Literal["human", "model", "auto"]] = Field(
        default_factory=lambda: ["human", "model", "auto"], description="mask sources to train on"
    )
    steps: int = Field(200, ge=1, le=1_000_000, description="optimisation steps")
    masks_per_image: int = Field(16, ge=1, le=256)
    lr: float = Field(8e-4, gt=0.0, lt=1.0)
    workers: int = Field(
        1, ge=1, le=1024, description="Ray Train workers (one GPU each where there are GPUs)"
    )
    freeze_image_encoder: bool = Field(False, description="train only the prompt encoder and mask decoder")
    cache_embeddings: bool = Field(
        False,
        description="freeze the encoder and encode each image once (fast on CPU; decoder-only training)",
    )
    encoder_lr_scale: float = Field(
        1.0, ge=0.0, le=10.0, description="the image encoder's lr as a multiple of lr (when it trains)"
    )
    freeze_norm_stats: bool = Field(
        False,
        description="keep the image encoder's BatchNorm statistics as loaded while it trains (a fine-tune on "
        "one image a step)",
    )
    focal_weight: float = Field(
        20.0, ge=0.0, description="focal share of the mask loss (paper 20:1 with dice)"
    )
    dice_weight: float = Field(1.0, ge=0.0)
    pixel_loss: Literal["focal", "bce"] = Field(
        "focal",
        description="pixel term of the mask loss: the paper's focal, or BCE (what the embedded model used)",
    )
    box_probability: float = Field(
        0.5, ge=0.0, le=1.0, description="odds that a mask's first prompt is a noisy box rather than a click"
    )
    background_points: int = Field(
        0,
        ge=0,
        le=64,
        description="clicks per image on background (3 px or more from every known mask), taught to find no "
        "mask: they lower the IoU head's rating of the automatic grid's background points (0: the paper's recipe)",
    )
    correction_points: int = Field(
        8, ge=0, le=20, description="clicks from the error region per mask (paper: 8)"
    )
    no_point_iterations: int = Field(2, ge=0, le=5, description="mask-only passes per mask (paper: 2)")
    seed: int = Field(0, ge=0)
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


class EvalSettings(BaseModel):
    """Held-out evaluation: the split's images, scored against a COCO file of their ground truth."""

    ground_truth: str = Field(
        ..., min_length=1, description="COCO JSON of the evaluation images' ground truth"
    )
    split: str = Field("test", description="evaluation images (never annotated by the stages)")
    max_images: int = Field(16, ge=1, le=100_000)
    max_clicks: int = Field(9, ge=1, le=20)
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
