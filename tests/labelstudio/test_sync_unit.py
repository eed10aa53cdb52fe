"""Sync logic without a server: the Prefect event, and a sync that writes nothing when nothing changed."""

import numpy as np
import pytest

from tasks.labelstudio import project, sync
from tasks.labelstudio.sync import SYNC_EVENT, sync_project


class FakeClient:
    url = "http://fake:8080"

    def __init__(self, tasks):
        self.tasks = tasks

    def iter_tasks(self, project_id):
        return iter(self.tasks)

    def user_emails(self):
        return {1: "ann@example.org"}


def _task(mask, ann_updated="2026-01-01T00:00:00Z"):
    result = project.brush_result(mask, result_id="r1")
    ann = {"id": 11, "result": [result], "completed_by": 1, "updated_at": ann_updated, "lead_time": 7.5}
    return {"id": 5, "data": {"image_id": "im"}, "annotations": [ann]}


@pytest.fixture
def mask():
    m = np.zeros((8, 10), bool)
    m[2:6, 3:9] = True
    return m


def test_a_sync_that_wrote_rows_emits_the_event_once(store, mask, monkeypatch):
    import prefect.events

    calls = []
    monkeypatch.setattr(prefect.events, "emit_event", lambda **kw: calls.append(kw))
    client = FakeClient([_task(mask)])
    report = sync_project(client, store, 3, round=1, stage="assisted_manual", emit=True)
    assert report.written == 1
    (call,) = calls
    assert call["event"] == SYNC_EVENT
    assert call["resource"] == {"prefect.resource.id": "sam-engine.labelstudio.project.3"}
    assert call["payload"]["written"] == 1 and call["payload"]["round"] == 1
    sync_project(client, store, 3, round=1, stage="assisted_manual", emit=True)
    assert len(calls) == 1  # nothing new, no event


def test_a_failing_event_does_not_fail_the_sync(store, mask, monkeypatch):
    import prefect.events

    def boom(**kw):
        raise RuntimeError("no Prefect server")

    monkeypatch.setattr(prefect.events, "emit_event", boom)
    report = sync_project(FakeClient([_task(mask)]), store, 3, round=1, stage="assisted_manual", emit=True)
    assert report.written == 1 and len(store.masks()) == 1


def test_without_a_prefect_server_the_event_is_skipped(store, mask, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    called = []
    monkeypatch.setattr(sync, "emit_synced_event", lambda *a, **k: called.append(a))
    sync_project(FakeClient([_task(mask)]), store, 3, round=1, stage="assisted_manual")
    assert called == []
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:1/api")
    sync_project(
        FakeClient([_task(mask, "2026-02-02T00:00:00Z")]), store, 3, round=1, stage="assisted_manual"
    )
    assert len(called) == 1


def test_mask_ids_are_deterministic_and_an_edit_supersedes(store, mask):
    sync_project(FakeClient([_task(mask)]), store, 3, round=1, stage="assisted_manual", emit=False)
    first = store.masks()
    assert first.mask_id[0] == sync.labelstudio_mask_id(5, 11, "r1", "2026-01-01T00:00:00Z")
    assert first.annotator[0] == "ann@example.org" and first.seconds[0] == 7.5
    edited = mask.copy()
    edited[0, 0] = True
    sync_project(
        FakeClient([_task(edited, "2026-01-02T00:00:00Z")]),
        store,
        3,
        round=1,
        stage="assisted_manual",
        emit=False,
    )
    current = store.masks()
    assert len(current) == 1 and current.supersedes[0] == first.mask_id[0]
    assert int(current.area[0]) == int(edited.sum())


def test_a_result_that_became_unreadable_keeps_its_earlier_version(store, mask):
    sync_project(FakeClient([_task(mask)]), store, 3, round=1, stage="assisted_manual", emit=False)
    broken = _task(mask, "2026-01-03T00:00:00Z")
    broken["annotations"][0]["result"][0]["value"]["rle"] = [1, 2, 3]
    report = sync_project(FakeClient([broken]), store, 3, round=1, stage="assisted_manual", emit=False)
    assert report.written == 0 and report.skipped[0].task_id == 5
    assert len(store.masks()) == 1
