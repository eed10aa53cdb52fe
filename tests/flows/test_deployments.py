"""prefect.yaml deploys to a real local Prefect server; a run triggered through the REST API (what the UI does),
with parameters, is executed by a process worker and leaves its masks in the store."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def test_deploy_trigger_with_parameters_and_worker_runs_it(engine, tmp_path, load_script):
    from stores import Store

    server_mod = load_script("prefect_server")
    server = server_mod.start_server(tmp_path / "prefect", timeout=120)
    try:
        env = server_mod.server_env(Path(server.home), server.api_url)
        env["SAM_ENGINE_STORE"] = engine["store"]
        env["SAM_ENGINE_HOME"] = str(tmp_path / "engine-home")
        env["OMP_NUM_THREADS"] = "1"
        server_mod.prefect_cli(env, "work-pool", "create", "sam-engine", "--type", "process")
        out = server_mod.prefect_cli(env, "--no-prompt", "deploy", "--all")
        assert "fully-automatic" in out

        api = server_mod.api_client(server.api_url)
        deployment = api.get("/deployments/name/fully-automatic/fully-automatic").json()
        parameters = {
            "params": {
                "round": 7,
                "model_version": engine["model"],
                "ingest": [engine["images"]],
                "images": {"max_images": 2},
                "autogen": {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0},
                "filter": {"min_predicted_iou": 0.0, "min_stability_score": 0.0, "min_area": 1},
                "embed": {"backend": "local"},
            }
        }
        # A constraint violation is refused when the run is created, before any worker sees it.
        bad = api.post(
            f"/deployments/{deployment['id']}/create_flow_run", json={"parameters": {"params": {"round": -1}}}
        )
        assert bad.status_code in (409, 422), bad.text
        server_mod.run_deployment(
            api, env, "fully-automatic", parameters, tmp_path / "worker.log", timeout=420
        )
        masks = Store(engine["store"]).masks(round=7, stage="fully_automatic")
        assert len(masks) > 0 and masks.image_id.nunique() == 2
        assert set(Store(engine["store"]).rounds()["round"]) == {7}
        schedules = api.get("/deployments/name/data-engine-round/data-engine-round").json()["schedules"]
        assert schedules and not schedules[0]["active"]
        # the retrain deployment listens for synced labels: an event creates a retrain run with the event's round
        automations = api.post("/automations/filter", json={}).json()
        assert any("sam-engine.labels.synced" in str(a.get("trigger")) for a in automations), automations
        # A sync below its threshold (retrain-due false) starts nothing; the next one, due, starts a retrain.
        emit = (
            "from prefect.events import emit_event\n"
            "for due, round in (('false', 2), ('true', 3)):\n"
            "    emit_event(event='sam-engine.labels.synced', resource={'prefect.resource.id': "
            "'sam-engine.labelstudio.project.1', 'sam-engine.retrain-due': due}, payload={'round': round})"
        )
        subprocess.run([sys.executable, "-c", emit], cwd=ROOT, env=env, check=True, timeout=120)
        assert server_mod.deployment_runs(api, "retrain", timeout=90), (
            "the labels-synced event started no retrain run"
        )
        time.sleep(5)  # time for a wrongly triggered run of the first event to show up too
        runs = server_mod.deployment_runs(api, "retrain", timeout=0)
        assert [int(run["parameters"]["params"]["round"]) for run in runs] == [3]
    finally:
        server_mod.stop_server(server)
