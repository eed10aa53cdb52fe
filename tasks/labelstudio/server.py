"""Install, start, stop and inspect a local Label Studio server.

Label Studio 1.23.2 pins versions the engine cannot share (pyarrow < 25, Django 5.2, ...), so it lives in its own
virtual environment (`$SAM_ENGINE_HOME/labelstudio-venv`, or env SAM_ENGINE_LS_VENV). `up` creates that venv when
it is missing, then starts Label Studio non-interactively, bound to 127.0.0.1, with a known user and a 40-hex legacy
API token, and local file serving under a document root (where the store's images live). State lives in a home
folder (`$SAM_ENGINE_HOME/labelstudio`, or env SAM_ENGINE_LS_HOME): the data dir, `server.json` (pid, port, url) and
`credentials.json` (user, password, token; mode 0600). A remote Label Studio needs none of this: `connect` takes its
URL and token from env SAM_ENGINE_LS_URL / SAM_ENGINE_LS_TOKEN.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tasks.settings import engine_home

from .client import LabelStudioClient

logger = logging.getLogger(__name__)

LABEL_STUDIO_VERSION = "1.23.2"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PORT = 8080
DEFAULT_USER = "engine@localhost.local"


class LabelStudioServerError(RuntimeError):
    """Label Studio could not be installed, started, reached or stopped."""


@dataclass(frozen=True)
class ServerInfo:
    """Where a Label Studio answers and how to log in. `token` is a secret: never print it."""

    url: str
    token: str
    username: str
    pid: int | None = None
    port: int | None = None
    home: str | None = None

    def __repr__(self) -> str:  # keeps the token out of logs and tracebacks
        return f"ServerInfo(url={self.url!r}, username={self.username!r}, pid={self.pid}, port={self.port})"

    __str__ = __repr__


def venv_dir() -> Path:
    """The Label Studio virtual environment (env SAM_ENGINE_LS_VENV, else `$SAM_ENGINE_HOME/labelstudio-venv`)."""
    return Path(os.environ.get("SAM_ENGINE_LS_VENV") or engine_home() / "labelstudio-venv")


def home_dir(home: str | os.PathLike | None = None) -> Path:
    """The folder holding the data dir, pid/port file and credentials (env SAM_ENGINE_LS_HOME, else
    `$SAM_ENGINE_HOME/labelstudio`)."""
    return Path(home or os.environ.get("SAM_ENGINE_LS_HOME") or engine_home() / "labelstudio")


def connect(
    url: str | None = None, home: str | os.PathLike | None = None, **client_options
) -> LabelStudioClient:
    """A client for the Label Studio to work with: ``url`` (or env SAM_ENGINE_LS_URL) with the token in env
    SAM_ENGINE_LS_TOKEN; with neither URL, the local server `up` started from ``home``, with its credentials.
    Never takes a token as an argument: tokens stay out of flow parameters and command lines."""
    url = url or os.environ.get("SAM_ENGINE_LS_URL")
    if url is None:
        local = info(home)  # LabelStudioServerError naming `labelstudio up` when none runs
        return LabelStudioClient(local.url, local.token, **client_options)
    token = os.environ.get("SAM_ENGINE_LS_TOKEN")
    if not token:
        try:  # the URL of the local server: its credentials are on this machine
            local = info(home)
            token = local.token if local.url.rstrip("/") == url.rstrip("/") else None
        except LabelStudioServerError:
            token = None
    if not token:
        raise ValueError(f"Label Studio at {url}: set SAM_ENGINE_LS_TOKEN to its API token")
    return LabelStudioClient(url, token, **client_options)


def document_root(home: str | os.PathLike | None = None) -> str | None:
    """The local server's document root (the folder it serves image files from), None when none runs here."""
    state = _read_state(home_dir(home))
    return None if not state else state.get("document_root")


def ensure_installed(venv: str | os.PathLike | None = None, python: str = "python3.11") -> Path:
    """Create the Label Studio venv and install label-studio==1.23.2 when missing. Returns the executable."""
    venv = Path(venv) if venv else venv_dir()
    exe = venv / "bin" / "label-studio"
    if exe.exists():
        return exe
    venv.parent.mkdir(parents=True, exist_ok=True)
    log_path = venv.parent / f"{venv.name}-install.log"
    logger.info("installing label-studio==%s into %s (about a minute)", LABEL_STUDIO_VERSION, venv)
    with open(log_path, "w") as log:
        steps = [
            [python, "-m", "venv", str(venv)],
            [str(venv / "bin" / "python"), "-m", "pip", "install", f"label-studio=={LABEL_STUDIO_VERSION}"],
        ]
        for cmd in steps:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
            if proc.returncode != 0:
                log.flush()
                # The log's last lines name the cause (a full disk, an unreachable index) where a CI run
                # shows only this message and the log is gone with its machine.
                tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-5:])
                raise LabelStudioServerError(
                    f"installing Label Studio failed at {' '.join(cmd[:3])!r} (exit {proc.returncode}); "
                    f"see {log_path}; it ends:\n{tail}"
                )
    if not exe.exists():
        raise LabelStudioServerError(f"label-studio executable missing after install: {exe}; see {log_path}")
    return exe


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on host:port (Label Studio would silently move to another port otherwise)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _credentials(home: Path, username: str | None) -> dict:
    """Load the stored credentials, or create them (random password, 40-hex token) on the first start."""
    path = home / "credentials.json"
    if path.exists():
        creds = json.loads(path.read_text())
        if username and username != creds["username"]:
            raise LabelStudioServerError(
                f"data dir in {home} belongs to user {creds['username']!r}, not {username!r}; use another home"
            )
        return creds
    creds = {
        "username": username or DEFAULT_USER,
        "password": secrets.token_urlsafe(16),
        "token": secrets.token_hex(20),
    }
    home.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(creds, f)
    return creds


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_state(home: Path) -> dict | None:
    path = home / "server.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())


def _whoami(url: str, token: str, timeout: float = 5.0) -> str | None:
    """The username the token logs in as at url, or None when it does not answer as ours."""
    try:
        resp = httpx.get(
            f"{url}/api/current-user/whoami", headers={"Authorization": f"Token {token}"}, timeout=timeout
        )
    except httpx.HTTPError:
        return None
    if resp.status_code != 200:
        return None
    body = resp.json()
    return body.get("email") or body.get("username")


def status(home: str | os.PathLike | None = None) -> dict:
    """What the home knows about its server: {"running": bool, "url", "pid", "port", "healthy": bool}."""
    home = home_dir(home)
    state = _read_state(home)
    if not state:
        return {"running": False, "home": str(home)}
    running = _pid_alive(int(state["pid"]))
    healthy = False
    if running:
        try:
            healthy = httpx.get(f"{state['url']}/health", timeout=3).status_code == 200
        except httpx.HTTPError:
            healthy = False
    return {"running": running, "healthy": healthy, "home": str(home), **state}


def info(home: str | os.PathLike | None = None) -> ServerInfo:
    """The running local server's url and credentials (LabelStudioServerError if none runs)."""
    home = home_dir(home)
    state = _read_state(home)
    if not state or not _pid_alive(int(state["pid"])):
        raise LabelStudioServerError(
            f"no Label Studio runs from {home}; start one with `sam-engine labelstudio up`"
        )
    creds = _credentials(home, None)
    return ServerInfo(
        state["url"], creds["token"], creds["username"], int(state["pid"]), int(state["port"]), str(home)
    )


def up(
    port: int = DEFAULT_PORT,
    home: str | os.PathLike | None = None,
    document_root: str | os.PathLike | None = None,
    username: str | None = None,
    venv: str | os.PathLike | None = None,
    timeout: float = 180.0,
) -> ServerInfo:
    """Install (if needed) and start Label Studio on 127.0.0.1:port; return its url and credentials.

    Idempotent: when this home's server already runs and answers as ours, it is returned as is.
    document_root: the folder local-file tasks are served from (default: `<home>/files`); image paths given to
    projects must lie under it.
    """
    home = home_dir(home).resolve()
    state = _read_state(home)
    creds = _credentials(home, username)
    if state and _pid_alive(int(state["pid"])):
        if _whoami(state["url"], creds["token"]) == creds["username"]:
            return ServerInfo(
                state["url"], creds["token"], creds["username"], state["pid"], state["port"], str(home)
            )
        raise LabelStudioServerError(
            f"a Label Studio process (pid {state['pid']}) from {home} runs but does not answer as ours at "
            f"{state['url']}; stop it with `sam-engine labelstudio down`"
        )
    if not port_is_free(port):
        raise LabelStudioServerError(f"port {port} on 127.0.0.1 is taken; pick another with --port")
    exe = ensure_installed(venv)
    data_dir = home / "data"
    doc_root = Path(document_root or home / "files").resolve()
    doc_root.mkdir(parents=True, exist_ok=True)
    first_start = not (data_dir / "label_studio.sqlite3").exists()
    env = {
        **os.environ,
        "LABEL_STUDIO_USERNAME": creds["username"],
        "LABEL_STUDIO_PASSWORD": creds["password"],
        "LABEL_STUDIO_USER_TOKEN": creds["token"],
        # Must be set before the organisation exists (first start), else every legacy-token call answers 401.
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(doc_root),
        # The engine's ML backend runs on 127.0.0.1, which Label Studio refuses by default.
        "SSRF_PROTECTION_ENABLED": "false",
        "ML_BLOCK_LOCAL_IP": "false",
        "LATEST_VERSION_CHECK": "false",
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        "COLLECT_ANALYTICS": "false",
        "LABEL_STUDIO_HOST": f"http://127.0.0.1:{port}",
        # Its settings are read before --data-dir is parsed: name the folder here too, so nothing lands in ~/.local.
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        # No network here: error reports to Sentry would only retry and fill the log.
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
    }
    url = f"http://127.0.0.1:{port}"
    log_path = home / "server.log"
    cmd = [str(exe), "start", "--no-browser", "--port", str(port), "--internal-host", "127.0.0.1"]
    cmd += ["--data-dir", str(data_dir)]
    with open(log_path, "ab") as log:
        # A new session makes the server (and any workers it spawns) one process group that `down` can stop.
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    state = {
        "pid": proc.pid,
        "port": port,
        "url": url,
        "document_root": str(doc_root),
        "data_dir": str(data_dir),
    }
    (home / "server.json").write_text(json.dumps(state))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            (home / "server.json").unlink(missing_ok=True)
            raise LabelStudioServerError(
                f"Label Studio exited with code {proc.returncode} at start; see {log_path}"
            )
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    else:
        down(home)
        raise LabelStudioServerError(
            f"Label Studio did not answer {url}/health within {timeout:.0f} s; see {log_path}"
        )
    # The port may have been taken between our check and its bind: trust it only if it knows our token.
    if _whoami(url, creds["token"]) != creds["username"]:
        down(home)
        raise LabelStudioServerError(
            f"{url} answers, but not as the server we started (first start: {first_start}); see {log_path}"
        )
    logger.info("Label Studio up at %s (pid %d)", url, proc.pid)
    return ServerInfo(url, creds["token"], creds["username"], proc.pid, port, str(home))


def down(home: str | os.PathLike | None = None, timeout: float = 20.0) -> bool:
    """Stop the server this home started (by its pid's process group). True if one was running."""
    home = home_dir(home)
    state = _read_state(home)
    if not state:
        return False
    pid = int(state["pid"])
    was_running = _pid_alive(pid)
    if was_running:
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _pid_alive(pid):
            try:  # reap it if it is our child
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.2)
        if _pid_alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    (home / "server.json").unlink(missing_ok=True)
    return was_running


def main() -> None:  # pragma: no cover - a debugging aid: python -m tasks.labelstudio.server up|down|status
    action = sys.argv[1] if len(sys.argv) > 1 else "status"
    if action == "up":
        print(up())
    elif action == "down":
        print(down())
    else:
        print(json.dumps(status(), indent=2))


if __name__ == "__main__":  # pragma: no cover
    main()
