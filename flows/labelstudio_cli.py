"""`sam-engine labelstudio ...`: run a local Label Studio and the engine's SAM ML backend.

    sam-engine labelstudio up [--port 8080] [--document-root DIR]   install if needed, start, print url + user
    sam-engine labelstudio down                                     stop the server `up` started
    sam-engine labelstudio status                                   is it running and healthy
    sam-engine labelstudio backend --store URL [--port 9090]        serve /health, /setup, /predict with the
                                                                    embedded model (or -m VERSION, --checkpoint)
    sam-engine labelstudio push --round N [--stage STAGE]           a round's images to the project
    sam-engine labelstudio sync                                     what people did, into the store

The API token is written to `<home>/credentials.json` (mode 0600) and printed only with `up --show-token`.
"""

from __future__ import annotations

import json
import os
from typing import Literal

import typer

from flows.cli_common import confident_filter, fraction, store_url
from flows.labelstudio import labelstudio_push, labelstudio_sync
from flows.params import ImageSelection, LabelStudioPushParams, LabelStudioSyncParams
from flows.progress import step_bar, watching
from stores import Store
from tasks.labelstudio import server
from tasks.labelstudio.ml_backend import SamBackend, make_server, serving_model
from tasks.labelstudio.server import connect

app = typer.Typer(help="Label Studio: a local server for people to label, and the SAM ML backend it calls.")
STORE = typer.Option(None, metavar="URI", help="store URL (default SAM_ENGINE_STORE)")


@app.command()
def up(
    port: int = typer.Option(8080, help="port on 127.0.0.1 (refused if taken)"),
    home: str = typer.Option(
        None, help="state folder (default SAM_ENGINE_LS_HOME, else $SAM_ENGINE_HOME/labelstudio)"
    ),
    document_root: str = typer.Option(None, help="folder local image files are served from"),
    show_token: bool = typer.Option(False, help="also print the API token"),
) -> None:
    """Install Label Studio into its own venv if missing, start it and wait until it answers."""
    info = server.up(port=port, home=home, document_root=document_root)
    typer.echo(f"Label Studio at {info.url} (pid {info.pid}); user {info.username}")
    typer.echo(f"credentials: {server.home_dir(home) / 'credentials.json'}")
    if show_token:
        typer.echo(f"token: {info.token}")


@app.command()
def down(home: str = typer.Option(None, help="state folder the server was started from")) -> None:
    """Stop the Label Studio that `up` started."""
    typer.echo("stopped" if server.down(home) else "not running")


@app.command()
def status(home: str = typer.Option(None, help="state folder the server was started from")) -> None:
    """Print whether the local Label Studio runs and answers /health."""
    typer.echo(json.dumps(server.status(home), indent=2))


@app.command()
def backend(
    store: str = STORE,
    model_version: str = typer.Option(
        None,
        "--model-version",
        "-m",
        metavar="VERSION",
        help="the store's model version to serve: embedded (default), latest or a registered one; with "
        "--checkpoint, the name its answers and embeddings carry (default: the --model name)",
    ),
    checkpoint: str = typer.Option(
        None,
        metavar="PATH",
        help="serve this checkpoint file (path or fsspec URL) instead of a model version",
    ),
    model: str = typer.Option(
        None,
        metavar="CONFIG",
        help="the --checkpoint's SAM config: tiny (default), tiny_conv, tiny_conv_slim, vit_b, vit_l, vit_h",
    ),
    clip_checkpoint: str = typer.Option(
        None, metavar="PATH", help="a CLIP text model's open_clip weights file here (default: its own)"
    ),
    host: str = typer.Option("127.0.0.1", metavar="HOST"),
    port: int = typer.Option(9090, metavar="PORT"),
    token_env: str = typer.Option(
        "SAM_ENGINE_BACKEND_TOKEN", metavar="NAME", help="env var holding the token Label Studio sends"
    ),
) -> None:
    """Serve the SAM ML backend until interrupted: the embedded model unless --model-version or --checkpoint
    says otherwise."""
    url = store_url(store)
    if model is not None and checkpoint is None:
        _fail(
            f"--model {model} needs --checkpoint; without one the backend serves --model-version "
            "(default embedded) from the store"
        )
    store_obj = Store(url)
    try:
        sam, version, text_encoder = serving_model(
            store_obj, model_version, model, checkpoint, clip_checkpoint
        )
    except (OSError, ValueError) as exc:
        _fail(str(exc))
    token = os.environ.get(token_env) or None
    if token is None:
        typer.echo(f"warning: {token_env} is not set; the backend accepts every caller", err=True)
    backend_app = SamBackend(store_obj, sam, version, token=token, text_encoder=text_encoder)
    httpd = make_server(backend_app, host, port)
    typer.echo(f"SAM ML backend on http://{host}:{httpd.server_address[1]} serving {version} (store {url})")
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()


LabelStage = Literal["assisted_manual", "semi_automatic"]
PROJECT = typer.Option("sam-engine", metavar="TITLE", help="the Label Studio project's title")
LS_URL = typer.Option(
    None,
    "--labelstudio-url",
    metavar="URL",
    help="Label Studio's URL, its token in SAM_ENGINE_LS_TOKEN (default SAM_ENGINE_LS_URL, else the local "
    "server `up` started)",
)


@app.command()
def push(
    round: int = typer.Option(..., "--round", "-r", min=0, metavar="N", help="the round the masks belong to"),
    stage: LabelStage = typer.Option(
        "assisted_manual",
        metavar="STAGE",
        help="assisted_manual (people click, SAM answers) or semi_automatic (the model's confident masks are "
        "the prediction people start from)",
    ),
    store: str = STORE,
    project: str = PROJECT,
    model_version: str = typer.Option(
        "embedded", "--model-version", "-m", metavar="VERSION", help="the model whose masks are predicted"
    ),
    split: str = typer.Option("train", metavar="SPLIT", help="the images to push"),
    max_images: int = typer.Option(None, min=1, metavar="N", help="at most this many images of the split"),
    labelstudio_url: str = LS_URL,
    document_root: str = typer.Option(
        None,
        metavar="DIR",
        help="the folder Label Studio serves image files from (default: the local server's)",
    ),
    ml_backend_url: str = typer.Option(
        None,
        metavar="URL",
        help="connect this SAM ML backend to the project (token in SAM_ENGINE_BACKEND_TOKEN; default "
        "SAM_ENGINE_BACKEND_URL)",
    ),
    confident_precision: float = fraction(
        None,
        "P",
        "semi_automatic: predict the masks at this calibrated precision (sam-engine calibrate) instead of the "
        "paper's fixed thresholds",
    ),
) -> None:
    """A round's images to a Label Studio project, one task each (a rerun adds none twice); prints the summary."""
    url = store_url(store)
    try:
        params = LabelStudioPushParams(
            store=url,
            round=round,
            stage=stage,
            model_version=model_version,
            images=ImageSelection(split=split, max_images=max_images),
            project=project,
            labelstudio_url=labelstudio_url,
            document_root=document_root,
            ml_backend_url=ml_backend_url,
            confident=confident_filter(confident_precision),
        )
        connect(labelstudio_url).close()  # say what is missing before Prefect starts
        with step_bar() as show, watching(show):
            summary = labelstudio_push(params)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        _fail(str(exc))
    typer.echo(json.dumps(summary, indent=2, default=str))


@app.command()
def sync(
    store: str = STORE,
    project: str = PROJECT,
    labelstudio_url: str = LS_URL,
    round: int = typer.Option(1, "--round", "-r", min=0, metavar="N", help="for tasks made by hand only"),
    stage: LabelStage = typer.Option("assisted_manual", metavar="STAGE", help="for tasks made by hand only"),
    retrain_threshold: int = typer.Option(
        20,
        min=1,
        metavar="N",
        help="masks changed since the newest model was trained that make a retrain due",
    ),
    retries: int = typer.Option(2, min=0, max=10, metavar="N", help="reruns when Label Studio fails"),
) -> None:
    """Pull what people added, edited and deleted since the last sync into the store; prints the summary."""
    try:
        params = LabelStudioSyncParams(
            store=store_url(store),
            project=project,
            labelstudio_url=labelstudio_url,
            round=round,
            stage=stage,
            retrain_threshold=retrain_threshold,
            retries=retries,
        )
        connect(labelstudio_url).close()
        summary = labelstudio_sync(params)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        _fail(str(exc))
    typer.echo(json.dumps(summary, indent=2, default=str))


def _fail(message: str) -> None:
    """One line on stderr and exit code 2, as the engine's other commands do for bad input."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)
