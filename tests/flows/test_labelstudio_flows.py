"""The labelstudio-sync flow against a Label Studio that fails, then recovers: the run retries and then fails with a
message that names the problem, the store and the cursor unchanged; the next sync picks up everything it missed,
and the one after adds nothing. The CLI says in one line what is missing."""

from __future__ import annotations

import secrets
from urllib.parse import urlparse

import numpy as np
import pytest
from typer.testing import CliRunner

from flows.cli import app
from stores import Store
from tasks.labelstudio import project
from tasks.labelstudio.sync import STATE_TABLE

from ..conftest import JsonStub


class _LabelStudio(JsonStub):
    """Just enough of Label Studio's API for a sync: one project, its tasks, its users. Answers 503 while
    ``failures`` is above zero."""

    failures = 0
    calls = 0
    tasks: list = []

    def do_GET(self):
        cls = type(self)
        cls.calls += 1
        if cls.failures > 0:
            cls.failures -= 1
            return self.reply(503, {"detail": "down for maintenance"})
        path = urlparse(self.path).path
        if path == "/api/projects":
            return self.reply(200, {"results": [{"id": 7, "title": "sam-engine"}], "next": None})
        if path == "/api/tasks":
            return self.reply(200, {"tasks": cls.tasks, "total": len(cls.tasks)})
        if path == "/api/users":
            return self.reply(200, [{"id": 1, "email": "ann@example.org"}])
        return self.reply(404, {"detail": f"no {path}"})


@pytest.fixture
def labelstudio(monkeypatch, serve_stub):
    handler = type("LabelStudio", (_LabelStudio,), {"failures": 0, "calls": 0, "tasks": []})
    monkeypatch.setenv("SAM_ENGINE_LS_URL", serve_stub(handler))
    monkeypatch.setenv("SAM_ENGINE_LS_TOKEN", secrets.token_hex(20))
    return handler


def _task(task_id: int, image_id: str, height: int, width: int) -> dict:
    mask = np.zeros((height, width), bool)
    mask[5 : 5 + task_id, 10:30] = True
    annotation = {
        "id": 100 + task_id,
        "result": [project.brush_result(mask, result_id=f"r{task_id}")],
        "completed_by": 1,
        "updated_at": "2026-12-01T10:00:00Z",
        "lead_time": 12.0,
    }
    data = {"image": "/data/x.png", "image_id": image_id, "round": 2, "stage": "assisted_manual"}
    return {"id": task_id, "data": data, "annotations": [annotation]}


def test_sync_retries_then_fails_clearly_and_the_next_sync_misses_nothing(
    prefect_harness, engine, labelstudio
):
    from flows.labelstudio import labelstudio_sync
    from flows.params import LabelStudioSyncParams
    from tasks.ingest import ingest

    ingest(engine["store"], [engine["images"]])
    store = Store(engine["store"])
    images = store.images().sort_values("image_id")
    labelstudio.tasks = [
        _task(i + 1, row.image_id, int(row.height), int(row.width))
        for i, row in enumerate(images.head(2).itertuples())
    ]
    params = LabelStudioSyncParams(store=engine["store"], retries=1, retry_delay_seconds=0)

    labelstudio.failures = 10_000  # down for the whole run
    with pytest.raises(Exception, match=r"Label Studio unavailable: GET .* failed 4 times; last: HTTP 503"):
        labelstudio_sync(params)
    assert labelstudio.calls == 8  # the client's 4 tries, twice: the task's retry ran
    assert len(store.masks(current_only=False)) == 0
    assert store.read_state(STATE_TABLE, f"{labelstudio_url()}/projects/7") is None

    labelstudio.failures = 0  # back: the next sync takes everything it missed
    summary = labelstudio_sync(params)
    assert (summary["new"], summary["written"], summary["partitions"]) == (2, 2, [[2, "assisted_manual"]])
    masks = store.masks()
    assert len(masks) == 2 and set(masks["source"]) == {"human"} and set(masks["round"].astype(int)) == {2}

    again = labelstudio_sync(params)
    assert again["written"] == 0 and len(store.masks(current_only=False)) == 2


def labelstudio_url() -> str:
    import os

    return os.environ["SAM_ENGINE_LS_URL"]


def test_sync_and_push_without_a_label_studio_say_so_in_one_line(engine, monkeypatch, tmp_path):
    from tasks.ingest import ingest

    ingest(engine["store"], [engine["images"]])
    for name in ("SAM_ENGINE_LS_URL", "SAM_ENGINE_LS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SAM_ENGINE_LS_HOME", str(tmp_path / "no-server"))
    runner = CliRunner()
    for args in (["labelstudio", "sync"], ["labelstudio", "push", "--round", "1"]):
        result = runner.invoke(app, [*args, "--store", engine["store"]])
        assert result.exit_code == 2, result.output
        assert "no Label Studio runs from" in result.output and "sam-engine labelstudio up" in result.output
        assert "Traceback" not in result.output
    result = runner.invoke(
        app, ["labelstudio", "sync", "--store", engine["store"], "--labelstudio-url", "http://127.0.0.1:9"]
    )
    assert result.exit_code == 2 and "set SAM_ENGINE_LS_TOKEN" in result.output
