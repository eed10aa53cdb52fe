"""prefect.yaml deploys to a real local Prefect server; a run triggered through the REST API (what the UI does),
with parameters, is executed by a process worker and leaves its masks in the store."""

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))


def _cli(env, *args, timeout=240):
    done = subprocess.run(
        [PREFECT, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_deploy_trigger_with_parameters_and_worker_runs_it(engine, tmp_path, load_script):
    from stores import Store

    server_mod = load_script("prefect_server")
    server = server_mod.start_server(tmp_path / "prefect", timeout=120)
    worker = None
    try:
        env = server_mod.server_env(Path(server.home), server.api_url)
        env["SAM_ENGINE_STORE"] = engine["store"]
        env["SAM_ENGINE_HOME"] = str(tmp_path / "engine-home")
        env["OMP_NUM_THREADS"] = "1"
        _cli(env, "work-pool", "create", "sam-engine", "--type", "process")
        out = _cli(env, "--no-prompt", "deploy", "--all")
        assert "fully-automatic" in out

        api = httpx.Client(base_url=server.api_url, timeout=30)
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
        created = api.post(
            f"/deployments/{deployment['id']}/create_flow_run", json={"parameters": parameters}
        )
        assert created.status_code == 201, created.text
        run_id = created.json()["id"]

        log = open(tmp_path / "worker.log", "wb")
        worker = subprocess.Popen(
            [PREFECT, "worker", "start", "--pool", "sam-engine", "--run-once"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 420
        state = None
        while time.monotonic() < deadline:
            state = api.get(f"/flow_runs/{run_id}").json()["state"]["type"]
            if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            time.sleep(2)
        assert state == "COMPLETED", (tmp_path / "worker.log").read_text()[-4000:]
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
        retrain = api.get("/deployments/name/retrain/retrain").json()
        runs = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not runs:
            runs = api.post(
                "/flow_runs/filter", json={"deployments": {"id": {"any_": [retrain["id"]]}}}
            ).json()
            time.sleep(2)
        assert runs, "the labels-synced event started no retrain run"
        time.sleep(5)  # time for a wrongly triggered run of the first event to show up too
        runs = api.post("/flow_runs/filter", json={"deployments": {"id": {"any_": [retrain["id"]]}}}).json()
        assert [int(run["parameters"]["params"]["round"]) for run in runs] == [3]
    finally:
        if worker is not None and worker.poll() is None:
            os.killpg(worker.pid, 15)
            worker.wait(timeout=30)
        server_mod.stop_server(server)
