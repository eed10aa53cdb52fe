"""Label Studio down, answering 5xx, or refusing the token: retries, then a clear error; the store unchanged."""

import logging
import secrets

import pytest

from stores.fsio import free_port
from tasks.labelstudio import server
from tasks.labelstudio.client import (
    LabelStudioAuthError,
    LabelStudioClient,
    LabelStudioError,
    LabelStudioUnavailable,
)
from tasks.labelstudio.sync import STATE_TABLE, cursor_key, sync_project

from ..conftest import JsonStub


class _Stub(JsonStub):
    """Answers every request with `status`, counting the calls."""

    status = 500
    calls = 0

    def _answer(self):
        type(self).calls += 1
        self.reply(self.status, {"detail": "boom"})

    do_GET = do_POST = do_PATCH = do_DELETE = _answer


@pytest.fixture
def stub(serve_stub):
    def start(status):
        handler = type("Stub", (_Stub,), {"status": status, "calls": 0})
        return serve_stub(handler), handler

    return start


def _store_is_empty(store, key):
    return len(store.masks(current_only=False)) == 0 and store.read_state(STATE_TABLE, key) is None


def test_5xx_is_retried_then_fails_clearly_and_the_store_is_unchanged(stub, store):
    url, handler = stub(500)
    client = LabelStudioClient(url, secrets.token_hex(20), retries=2, backoff=0.01)
    with pytest.raises(LabelStudioUnavailable, match=r"failed 3 times; last: HTTP 500"):
        sync_project(client, store, project_id=7, round=1, stage="assisted_manual", emit=False)
    assert handler.calls == 3
    assert _store_is_empty(store, cursor_key(client, 7))


def test_server_down_fails_clearly_and_the_store_is_unchanged(store):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    client = LabelStudioClient(url, secrets.token_hex(20), retries=1, backoff=0.01)
    with pytest.raises(LabelStudioUnavailable, match="ConnectError"):
        sync_project(client, store, project_id=3, round=1, stage="assisted_manual", emit=False)
    assert _store_is_empty(store, cursor_key(client, 3))


def test_refused_token_is_a_clear_error_that_never_shows_the_token(stub, store, caplog):
    url, handler = stub(401)
    token = secrets.token_hex(20)
    client = LabelStudioClient(url, token, retries=3, backoff=0.01)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(LabelStudioAuthError, match="refused the API token") as info:
        sync_project(client, store, project_id=1, round=1, stage="assisted_manual", emit=False)
    assert handler.calls == 1  # a refused token is not retried
    assert token not in str(info.value) and token not in repr(client)
    assert token not in caplog.text
    assert _store_is_empty(store, cursor_key(client, 1))


def test_other_4xx_names_the_call(stub):
    url, _ = stub(404)
    client = LabelStudioClient(url, "t" * 40, retries=0)
    with pytest.raises(LabelStudioError, match=r"GET .*/api/projects/9 answered 404"):
        client.get_project(9)


def test_missing_url_or_token_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("SAM_ENGINE_LS_URL", raising=False)
    monkeypatch.delenv("SAM_ENGINE_LS_TOKEN", raising=False)
    with pytest.raises(ValueError, match="SAM_ENGINE_LS_URL"):
        LabelStudioClient()
    with pytest.raises(ValueError, match="SAM_ENGINE_LS_TOKEN"):
        LabelStudioClient("http://127.0.0.1:1")


def test_up_refuses_a_taken_port(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(server.LabelStudioServerError, match=f"port {port} .* is taken"):
            server.up(port=port, home=tmp_path / "home")


def test_a_failed_install_says_why_in_the_error(tmp_path):
    """CI shows only the exception; the install log is gone with the machine, so the error carries its end."""
    fake_python = tmp_path / "python3.11"
    fake_python.write_text("#!/bin/sh\necho 'Error: [Errno 28] No space left on device' >&2\nexit 1\n")
    fake_python.chmod(0o755)
    with pytest.raises(server.LabelStudioServerError, match="No space left on device") as err:
        server.ensure_installed(tmp_path / "ls-venv", python=str(fake_python))
    assert "-m venv" in str(err.value)
