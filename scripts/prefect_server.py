"""Start and stop a local Prefect server on 127.0.0.1, for tests and for users who want the UI.

    python scripts/prefect_server.py start [--port N] [--home DIR]   # prints the PREFECT_API_URL to export
    python scripts/prefect_server.py stop  [--home DIR]

``start`` picks a free port unless one is given, runs ``prefect server start`` in its own process group with
``PREFECT_HOME=DIR/prefect`` (default ``$SAM_ENGINE_HOME`` or ``./.engine``), waits until ``/api/health`` answers
(5-15 s), and records the pid and URL in ``DIR/prefect-server.json`` so that ``stop`` ends exactly that server.
Analytics are off: the machine may have no internet access.

Tests import :func:`start_server` / :func:`stop_server` (they return and take a :class:`LocalPrefectServer`), and
drive a server with :func:`api_client`, :func:`prefect_cli`, :func:`create_run`, :func:`run_deployment` and
:func:`deployment_runs`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from stores.fsio import free_port

STATE_FILE = "prefect-server.json"
ROOT = Path(__file__).resolve().parents[1]  # where prefect.yaml is: the CLI deploys from here
FINAL_STATES = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
# The server answers 503 "Service Unavailable" for errors it deems worth retrying (prefect.server.api.server's
# custom_internal_exception_handler), such as its SQLite database busy while a worker writes; Prefect's own client
# retries them. Attempts in all, and the first wait in seconds (doubling: 31 s of waits in all).
RETRIES = 6
RETRY_WAIT = 1.0


@dataclass
class LocalPrefectServer:
    """A running server: its pid (also its process group id), API URL and home directory."""

    pid: int
    api_url: str
    home: str
    log_path: str


def server_env(home: Path, api_url: str | None = None) -> dict[str, str]:
    """The environment a server (or a client of it) needs: its home, analytics off, optionally its URL."""
    env = dict(os.environ)
    env["PREFECT_HOME"] = str(home / "prefect")
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env["PREFECT_SERVER_UI_ENABLED"] = env.get("PREFECT_SERVER_UI_ENABLED", "true")
    if api_url:
        env["PREFECT_API_URL"] = api_url
    else:
        env.pop("PREFECT_API_URL", None)
    return env


def wait_healthy(api_url: str, timeout: float = 90.0, proc: subprocess.Popen | None = None) -> None:
    """Poll ``{api_url}/health`` until it answers 200; raise TimeoutError (or RuntimeError if proc died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with code {proc.returncode} before it became healthy")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"prefect server at {api_url} did not answer /health within {timeout:.0f} s")


def start_server(home: Path, port: int | None = None, timeout: float = 90.0) -> LocalPrefectServer:
    """Start ``prefect server start`` on 127.0.0.1 and wait until it is healthy."""
    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    log_path = home / "prefect-server.log"
    command = [_prefect(), "server", "start"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            command,
            env=server_env(home),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, so stop_server ends the server and its children
        )
    server = LocalPrefectServer(pid=proc.pid, api_url=api_url, home=str(home), log_path=str(log_path))
    try:
        wait_healthy(api_url, timeout=timeout, proc=proc)
    except Exception:
        stop_server(server)
        raise
    (home / STATE_FILE).write_text(json.dumps(asdict(server)))
    return server


def stop_server(server: LocalPrefectServer, timeout: float = 20.0) -> None:
    """End the server's process group: SIGTERM, then SIGKILL after ``timeout`` seconds."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(server.pid, 0)
        except ProcessLookupError:
            break
        _reap(server.pid)
        time.sleep(0.2)
    else:
        try:
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _reap(server.pid)
    state = Path(server.home) / STATE_FILE
    if state.exists() and json.loads(state.read_text()).get("pid") == server.pid:
        state.unlink()


def prefect_cli(env: dict[str, str], *args: str, timeout: float = 240) -> str:
    """Run ``prefect ARGS`` from the repository root against the server ``env`` names (server_env); its stdout.
    Raises RuntimeError with both outputs when the command fails."""
    done = subprocess.run(
        [_prefect(), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        raise RuntimeError(f"prefect {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


class RetryUnavailable(httpx.BaseTransport):
    """A transport that sends a request again, after a doubling wait, while the server answers 503: the
    server's word that the request did nothing and may be retried. ``inner`` sends the requests."""

    def __init__(
        self, inner: httpx.BaseTransport | None = None, attempts: int = RETRIES, wait: float = RETRY_WAIT
    ) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts}")
        self.inner = inner or httpx.HTTPTransport()
        self.attempts = attempts
        self.wait = wait

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()  # the body, kept in memory, so that it can be sent again
        for attempt in range(self.attempts - 1):
            response = self.inner.handle_request(request)
            if response.status_code != 503:
                return response
            response.close()
            time.sleep(self.wait * 2**attempt)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def api_client(api_url: str, timeout: float = 30.0) -> httpx.Client:
    """An httpx.Client on a Prefect server's API (``api_url``, as LocalPrefectServer.api_url) that retries the
    server's 503 answers (RetryUnavailable)."""
    return httpx.Client(base_url=api_url, timeout=timeout, transport=RetryUnavailable())


def create_run(api, name: str, parameters: dict) -> str:
    """Create a run of the deployment ``name`` (of the flow of that name) as the UI does; its id. The create
    carries an idempotency key, so that one sent again (api_client retries a 503) returns the run the key made
    first (HTTP 200), never a second run that a later worker would pick up. RuntimeError when it fails."""
    deployment = api.get(f"/deployments/name/{name}/{name}").json()
    body = {"parameters": parameters, "idempotency_key": f"{name}-{uuid.uuid4().hex}"}
    created = api.post(f"/deployments/{deployment['id']}/create_flow_run", json=body)
    if created.status_code not in (200, 201):
        raise RuntimeError(f"{name}: the run was not created: {created.text}")
    return created.json()["id"]


def run_deployment(
    api, env: dict[str, str], name: str, parameters: dict, log: Path, timeout: float = 300
) -> dict:
    """Create a run of the deployment ``name`` (of the flow of that name) as the UI does, let a process worker of
    the pool "sam-engine" execute it once (its output appended to ``log``), and return the finished run.
    ``api`` is an httpx.Client on the server's API URL (api_client). Raises RuntimeError, with the end of the
    worker's log, when the run does not complete within ``timeout`` seconds."""
    run_id = create_run(api, name, parameters)
    with open(log, "ab") as out:
        worker = subprocess.Popen(
            [_prefect(), "worker", "start", "--pool", "sam-engine", "--run-once"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout
        run = api.get(f"/flow_runs/{run_id}").json()
        while time.monotonic() < deadline and run["state"]["type"] not in FINAL_STATES:
            time.sleep(2)
            run = api.get(f"/flow_runs/{run_id}").json()
        if run["state"]["type"] != "COMPLETED":
            raise RuntimeError(f"{name}: run {run_id} is {run['state']['type']}:\n{log.read_text()[-4000:]}")
        return run
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=30)


def deployment_runs(api, name: str, timeout: float) -> list[dict]:
    """The runs of the deployment ``name``, polled until there is one or ``timeout`` seconds have passed."""
    deployment = api.get(f"/deployments/name/{name}/{name}").json()
    query = {"deployments": {"id": {"any_": [deployment["id"]]}}}
    deadline = time.monotonic() + timeout
    runs = api.post("/flow_runs/filter", json=query).json()
    while time.monotonic() < deadline and not runs:
        time.sleep(2)
        runs = api.post("/flow_runs/filter", json=query).json()
    return runs


def _prefect() -> str:
    prefect = Path(sys.executable).with_name("prefect")
    return str(prefect) if prefect.exists() else "prefect"


def _reap(pid: int) -> None:
    # The server is our child when started from this process: collect it so it does not linger as a zombie.
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--port", type=int, default=None, help="port to listen on (default: a free one)")
    parser.add_argument(
        "--home",
        type=Path,
        default=Path(os.environ.get("SAM_ENGINE_HOME", ".engine")),
        help="engine state dir (default: $SAM_ENGINE_HOME or ./.engine)",
    )
    args = parser.parse_args(argv)
    home = args.home.resolve()
    if args.action == "start":
        server = start_server(home, port=args.port)
        print(f"prefect server pid {server.pid}; logs in {server.log_path}")
        print(f"export PREFECT_API_URL={server.api_url}")
        return 0
    state = home / STATE_FILE
    if not state.exists():
        print(f"no server recorded in {state}", file=sys.stderr)
        return 1
    stop_server(LocalPrefectServer(**json.loads(state.read_text())))
    print("prefect server stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
