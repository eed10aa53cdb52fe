"""`sam-engine labelstudio ...`: run a local Label Studio and the engine's SAM ML backend.

    sam-engine labelstudio up [--port 8080] [--document-root DIR]   install if needed, start, print url + user
    sam-engine labelstudio down                                     stop the server `up` started
    sam-engine labelstudio status                                   is it running and healthy
    sam-engine labelstudio backend --store URL [--port 9090]        serve /health, /setup, /predict

The API token is written to `<home>/credentials.json` (mode 0600) and printed only with `up --show-token`.
"""

from __future__ import annotations

import json
import os

import typer

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
    store: str = typer.Option(None, help="store URL (default SAM_ENGINE_STORE)"),
    model: str = typer.Option("tiny", help="sam_core config name: tiny, vit_b, vit_l, vit_h"),
    checkpoint: str = typer.Option(None, help="checkpoint path or fsspec URL (none: random weights)"),
    model_version: str = typer.Option(None, help="embedding key in the store (default: the model name)"),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(9090),
    token_env: str = typer.Option(
        "SAM_ENGINE_BACKEND_TOKEN", help="env var holding the token Label Studio sends"
    ),
) -> None:
    """Serve the SAM ML backend until interrupted."""
    from stores import Store
    from tasks.labelstudio.ml_backend import SamBackend, build_model, make_server
    from tasks.settings import EngineSettings

    store_url = store or EngineSettings.from_env().store_url
    token = os.environ.get(token_env) or None
    if token is None:
        typer.echo(f"warning: {token_env} is not set; the backend accepts every caller", err=True)
    sam = build_model(model, checkpoint)
    sam.eval()
    backend_app = SamBackend(Store(store_url), sam, model_version or model, token=token)
    server = make_server(backend_app, host, port)
    typer.echo(f"SAM ML backend on http://{host}:{server.server_address[1]} (store {store_url})")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
