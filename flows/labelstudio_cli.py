"""`sam-engine labelstudio ...`: run a local Label Studio and the engine's SAM ML backend.

    sam-engine labelstudio up [--port 8080] [--document-root DIR]   install if needed, start, print url + user
    sam-engine labelstudio down                                     stop the server `up` started
    sam-engine labelstudio status                                   is it running and healthy
    sam-engine labelstudio backend --store URL [--port 9090]        serve /health, /setup, /predict with the
                                                                    embedded model (or -m VERSION, --checkpoint)

The API token is written to `<home>/credentials.json` (mode 0600) and printed only with `up --show-token`.
"""

from __future__ import annotations

import json
import os

import typer

from stores import Store
from tasks.labelstudio.ml_backend import SamBackend, make_server, serving_model
from tasks.settings import EngineSettings

app = typer.Typer(help="Label Studio: a local server for people to label, and the SAM ML backend it calls.")


@app.command()
def up(
    port: int = typer.Option(8080, help="port on 127.0.0.1 (refused if taken)"),
    home: str = typer.Option(None, help="state folder (default .engine/labelstudio or SAM_ENGINE_LS_HOME)"),
    document_root: str = typer.Option(None, help="folder local image files are served from"),
    show_token: bool = typer.Option(False, help="also print the API token"),
) -> None:
    """Install Label Studio into its own venv if missing, start it and wait until it answers."""
    from tasks.labelstudio import server

    info = server.up(port=port, home=home, document_root=document_root)
    typer.echo(f"Label Studio at {info.url} (pid {info.pid}); user {info.username}")
    typer.echo(f"credentials: {server.home_dir(home) / 'credentials.json'}")
    if show_token:
        typer.echo(f"token: {info.token}")


@app.command()
def down(home: str = typer.Option(None, help="state folder the server was started from")) -> None:
    """Stop the Label Studio that `up` started."""
    from tasks.labelstudio import server

    typer.echo("stopped" if server.down(home) else "not running")


@app.command()
def status(home: str = typer.Option(None, help="state folder the server was started from")) -> None:
    """Print whether the local Label Studio runs and answers /health."""
    from tasks.labelstudio import server

    typer.echo(json.dumps(server.status(home), indent=2))


@app.command()
def backend(
    store: str = typer.Option(None, metavar="URI", help="store URL (default SAM_ENGINE_STORE)"),
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
        help="the --checkpoint's SAM config: tiny (default), tiny_conv, vit_b, vit_l, vit_h",
    ),
    host: str = typer.Option("127.0.0.1", metavar="HOST"),
    port: int = typer.Option(9090, metavar="PORT"),
    token_env: str = typer.Option(
        "SAM_ENGINE_BACKEND_TOKEN", metavar="NAME", help="env var holding the token Label Studio sends"
    ),
) -> None:
    """Serve the SAM ML backend until interrupted: the embedded model unless --model-version or --checkpoint
    says otherwise."""
    store_url = store or EngineSettings.from_env().store_url
    if model is not None and checkpoint is None:
        _fail(
            f"--model {model} needs --checkpoint; without one the backend serves --model-version "
            "(default embedded) from the store"
        )
    store_obj = Store(store_url)
    try:
        sam, version = serving_model(store_obj, model_version, model, checkpoint)
    except (OSError, ValueError) as exc:
        _fail(str(exc))
    token = os.environ.get(token_env) or None
    if token is None:
        typer.echo(f"warning: {token_env} is not set; the backend accepts every caller", err=True)
    backend_app = SamBackend(store_obj, sam, version, token=token)
    server = make_server(backend_app, host, port)
    typer.echo(
        f"SAM ML backend on http://{host}:{server.server_address[1]} serving {version} (store {store_url})"
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _fail(message: str) -> None:
    """One line on stderr and exit code 2, as the engine's other commands do for bad input."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)
