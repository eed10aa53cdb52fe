"""The test helpers' Prefect API client sends a request again while the server answers 503 (its word for "retry"),
and no longer than that."""

from __future__ import annotations

import json

import httpx
import pytest


def _client(server_mod, replies: list[int], seen: list[bytes], attempts: int = 5) -> httpx.Client:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.content)
        status = replies.pop(0) if replies else 201
        return httpx.Response(
            status, json={"exception_message": "Service Unavailable"} if status == 503 else {}
        )

    transport = server_mod.RetryUnavailable(httpx.MockTransport(answer), attempts=attempts, wait=0.0)
    return httpx.Client(base_url="http://127.0.0.1:1/api", transport=transport)


def test_a_503_is_sent_again_with_the_same_body_until_the_server_answers(load_script):
    server_mod = load_script("prefect_server")
    seen: list[bytes] = []
    with _client(server_mod, [503, 503], seen) as api:
        response = api.post("/deployments/x/create_flow_run", json={"idempotency_key": "k"})
    assert response.status_code == 201
    assert len(seen) == 3 and len(set(seen)) == 1 and b'"idempotency_key"' in seen[0]


def test_other_errors_are_answered_at_once_and_503s_only_so_many_times(load_script):
    server_mod = load_script("prefect_server")
    seen: list[bytes] = []
    with _client(server_mod, [500], seen) as api:
        assert api.get("/flow_runs/x").status_code == 500
    assert len(seen) == 1
    seen.clear()
    with _client(server_mod, [503] * 10, seen, attempts=3) as api:
        assert api.get("/flow_runs/x").status_code == 503
    assert len(seen) == 3
    with pytest.raises(ValueError, match="attempts must be >= 1"):
        server_mod.RetryUnavailable(attempts=0)


def test_a_create_sent_again_carries_one_idempotency_key_and_takes_the_run_it_made(load_script):
    server_mod = load_script("prefect_server")
    creates: list[dict] = []
    replies = [503, 200]  # the second send: the server had made the run under that key

    def answer(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"id": "deployment-1"})
        creates.append(json.loads(request.content))
        return httpx.Response(
            replies.pop(0), json={"id": "run-1", "exception_message": "Service Unavailable"}
        )

    transport = server_mod.RetryUnavailable(httpx.MockTransport(answer), wait=0.0)
    with httpx.Client(base_url="http://127.0.0.1:1/api", transport=transport) as api:
        assert server_mod.create_run(api, "labelstudio-sync", {"params": {}}) == "run-1"
    assert len(creates) == 2 and creates[0] == creates[1]
    assert creates[0]["idempotency_key"].startswith("labelstudio-sync-")
    with httpx.Client(base_url="http://127.0.0.1:1/api", transport=httpx.MockTransport(answer)) as api:
        replies.append(422)
        with pytest.raises(RuntimeError, match="labelstudio-sync: the run was not created"):
            server_mod.create_run(api, "labelstudio-sync", {"params": {}})
