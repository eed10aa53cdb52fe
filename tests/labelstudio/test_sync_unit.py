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


def _task(mask, ann_updated="2026-01-01T00:00:00Z", task_id=5, ann_id=11, **data):
    result = project.brush_result(mask, result_id="r1")
    ann = {"id": ann_id, "result": [result], "completed_by": 1, "updated_at": ann_updated, "lead_time": 7.5}
    return {"id": task_id, "data": {"image_id": "im", **data}, "annotations": [ann]}


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
    assert call["resource"] == {
        "prefect.resource.id": "sam-engine.labelstudio.project.3",
        "sam-engine.retrain-due": "false",  # no threshold given: never due
    }
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


def test_each_task_lands_in_the_round_and_stage_its_data_names_and_a_deletion_follows_it(store, mask):
    pushed = _task(mask, round=4, stage="semi_automatic")
    by_hand = _task(mask, task_id=6, ann_id=12)  # no round or stage in its data: the sync's defaults
    report = sync_project(
        FakeClient([pushed, by_hand]), store, 3, round=1, stage="assisted_manual", emit=False
    )
    assert sorted(report.partitions) == [(1, "assisted_manual"), (4, "semi_automatic")]
    masks = store.masks()
    assert sorted(zip(masks["round"].astype(int), masks["stage"].astype(str), strict=True)) == [
        (1, "assisted_manual"),
        (4, "semi_automatic"),
    ]
    # The pushed task's annotation is deleted in Label Studio: its tombstone withdraws it where it lies.
    again = sync_project(FakeClient([by_hand]), store, 3, round=2, stage="assisted_manual", emit=False)
    assert again.deleted == 1 and again.partitions == [(4, "semi_automatic")]
    assert len(store.masks(round=4)) == 0 and len(store.masks(round=1)) == 1


def test_a_retrain_is_due_once_enough_masks_changed_since_the_newest_model_was_trained(store, mask):
    first = sync_project(
        FakeClient([_task(mask)]), store, 3, round=1, stage="assisted_manual", emit=False, retrain_threshold=2
    )
    assert first.pending == 1 and not first.retrain_due
    second = sync_project(
        FakeClient([_task(mask), _task(mask, task_id=6, ann_id=12)]),
        store,
        3,
        round=1,
        stage="assisted_manual",
        emit=False,
        retrain_threshold=2,
    )
    assert second.written == 1 and second.pending == 2 and second.retrain_due
    assert second.summary()["retrain_due"] is True


@pytest.mark.parametrize(
    "data", [{"round": -1, "stage": "nonsense"}, {"round": "two", "stage": 3}, {"round": True, "stage": None}]
)
def test_a_task_whose_round_or_stage_was_edited_into_nonsense_takes_the_defaults(store, mask, data):
    report = sync_project(
        FakeClient([_task(mask, **data)]), store, 3, round=1, stage="assisted_manual", emit=False
    )
    assert report.partitions == [(1, "assisted_manual")]
