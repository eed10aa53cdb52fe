"""What the `sam-engine` commands share: the options several of them take, the store they open, one line on stderr
for bad input, and the frame of a command that works on one model version.

The commands themselves are in flows/cli.py (the engine), flows/segment_cli.py (`segment`) and
flows/labelstudio_cli.py (`labelstudio ...`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import typer
from pydantic import BaseModel

from flows.progress import Report, progress_bar
from flows.stages import STAGES
from sam_core import defaults
from stores import Store, StoreNotFoundError
from stores.fsio import resolve_filesystem
from tasks.autogen import AutogenSettings
from tasks.filter import CONFIDENT, FilterSettings
from tasks.models import resolve_version
from tasks.settings import EngineSettings


def form_default(form: type[BaseModel], name: str):
    """The default of a form's field: an option that a flow parameter also has shows the flow's default."""
    return form.model_fields[name].default


def fraction(default: float | None, metavar: str, help: str, min: float = 0.0):
    """An option for a number from ``min`` to 1: a threshold, a precision, an IoU."""
    return typer.Option(default, min=min, max=1.0, metavar=metavar, help=help)


def confident_filter(precision: float | None, **settings) -> FilterSettings:
    """The filter of the semi-automatic stage's pre-filled masks (tasks.filter.CONFIDENT) with ``settings``
    changed: its fixed thresholds, or with ``precision`` the model's calibrated ones at that precision."""
    if precision is not None:
        settings["target_precision"] = precision
    return FilterSettings.model_validate({**CONFIDENT.model_dump(), **settings})


PRECISION_CONFIDENCE = typer.Option(
    form_default(FilterSettings, "precision_confidence"),
    min=0.5,
    max=0.999,
    metavar="C",
    help="with --target-precision / --confident-precision: the one-sided confidence at which the calibration's "
    "precision must reach it (its Wilson lower bound); lower keeps more masks when few images were calibrated on, "
    "0.5 the observed precision",
)
STORE = typer.Option(
    None, "--store", metavar="URI", help="store URL or path (default: SAM_ENGINE_STORE or ./.engine/store)"
)
MODEL = typer.Option(
    "embedded", "--model-version", "-m", metavar="VERSION", help="model version ('latest': the newest)"
)
# The automatic mask generator's grid and fixed thresholds (the paper's defaults), wherever a command runs it.
POINTS_PER_SIDE = typer.Option(
    defaults.POINTS_PER_SIDE,
    min=1,
    max=128,
    metavar="N",
    help="automatic masks: an N x N grid of point prompts per image",
)
MIN_REGION_AREA = typer.Option(
    form_default(AutogenSettings, "min_mask_region_area"),
    "--min-region-area",
    min=0,
    metavar="PX",
    help="automatic masks: fill holes and drop islands under PX pixels (0: off), in the calibration too",
)
CROP_LAYERS = typer.Option(
    form_default(AutogenSettings, "crop_n_layers"),
    "--crop-layers",
    min=0,
    max=3,
    metavar="N",
    help="automatic masks: also look at N layers of zoomed-in crops (layer i: (2**i)**2 crops, the same grid "
    "each), as the paper's stage 3 did; thresholds are calibrated on the same crops",
)
PRED_IOU_THRESH = fraction(
    defaults.PRED_IOU_THRESH, "T", "automatic masks: keep predicted IoU > T (fixed thresholds)"
)
STABILITY_THRESH = fraction(
    defaults.STABILITY_SCORE_THRESH, "S", "automatic masks: keep stability score >= S (fixed thresholds)"
)
STAGE_HELP = f"one of {', '.join(STAGES)}"
ONLY_ROUND = typer.Option(None, metavar="N", help="only this round")
ONLY_STAGE = typer.Option(None, metavar="STAGE", help=f"only this stage: {STAGE_HELP}")
Backend = Literal["ray", "local"]


def store_url(url: str | None) -> str:
    """The store URL: --store, else SAM_ENGINE_STORE, else file://$SAM_ENGINE_HOME/store."""
    return url or EngineSettings.from_env().store_url


def new_store_url(url: str | None) -> str:
    """The store URL of a command that may create the store, its protocol checked; creates nothing yet."""
    resolved = store_url(url)
    try:
        resolve_filesystem(resolved)
    except (OSError, ValueError) as exc:
        fail(exc)
    return resolved


def existing_store(url: str | None) -> Store:
    """The Store of a command that reads: one that is not there is an error (exit 2), and no folder is made."""
    try:
        return Store(store_url(url), create=False)
    except (OSError, ValueError) as exc:
        fail(exc)


def fail(exc: Exception) -> None:
    """One line on stderr and exit code 2: bad input is the user's to fix, not a traceback to read."""
    message = f"error: {exc}"
    if isinstance(exc, StoreNotFoundError):
        message += " (`sam-engine ingest` or `sam-engine model add` creates a store)"
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@contextmanager
def on_model_version(
    store: str | None, model_version: str, doing: str
) -> Iterator[tuple[Store, str, Report]]:
    """The frame of a command that works on one model version of an existing store: yields (the Store, the
    version resolved, the callback of a progress bar titled "DOING VERSION"); bad input in the block
    (OSError, ValueError, KeyError) is one line and exit 2."""
    opened = existing_store(store)
    try:
        version = resolve_version(opened, model_version)
        with progress_bar(f"{doing} {version}") as report:
            yield opened, version, report
    except (OSError, ValueError, KeyError) as exc:
        fail(exc)


def read(table, **filters):
    """``table(**filters)`` (a Store reader); a damaged or foreign file is one line and exit 2."""
    try:
        return table(**filters)
    except (OSError, ValueError) as exc:
        fail(exc)


def print_json(data) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))
