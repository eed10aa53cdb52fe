"""One labelling cycle as a team runs it, on a real Prefect server with a process worker and a real Label Studio:
prefect.yaml deployed, the push deployment run, annotations posted through Label Studio's REST API as a browser does,
the sync deployment run, the masks read back with plain pandas, and the retrain deployment's run created by the
trigger on the synced event."""

from __future__ import annotations

import secrets
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stores import Store
from tasks.labelstudio import project
from tasks.labelstudio.ml_backend import SamBackend, serve_in_thread

from .conftest import make_images
from .test_integration import _post_as_browser

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_push_label_sync_and_the_retrain_the_trigger_starts(
    ls_server, ls_client, document_root, tiny_sam, tmp_path, run_id, load_script
):
    store_url = (tmp_path / "store").as_uri()
    store = Store(store_url)
    images = make_images(store, Path(document_root) / f"cycle-{run_id}", n=2, prefix=f"cycle-{run_id}-")
    title = f"team cycle {run_id}"
    backend_token = secrets.token_hex(16)
    backend, backend_url = serve_in_thread(SamBackend(store, tiny_sam, "tiny-test", token=backend_token))
    server_mod = load_script("prefect_server")
    server = server_mod.start_server(tmp_path / "prefect", timeout=120)
    try:
        env = server_mod.server_env(Path(server.home), server.api_url)
        env.update(
            SAM_ENGINE_STORE=store_url,
            SAM_ENGINE_HOME=str(tmp_path / "engine-home"),
            SAM_ENGINE_LS_URL=ls_server.url,
            SAM_ENGINE_LS_TOKEN=ls_server.token,
            SAM_ENGINE_BACKEND_TOKEN=backend_token,
            OMP_NUM_THREADS="1",
        )
        server_mod.prefect_cli(env, "work-pool", "create", "sam-engine", "--type", "process")
        server_mod.prefect_cli(env, "--no-prompt", "deploy", "--all")
        api = server_mod.api_client(server.api_url)
        sync_schedule = api.get("/deployments/name/labelstudio-sync/labelstudio-sync").json()["schedules"]
        assert sync_schedule and not sync_schedule[0]["active"]  # created paused

        push = {
            "params": {
                "round": 1,
                "project": title,
                "document_root": document_root,
                "ml_backend_url": backend_url,
            }
        }
        server_mod.run_deployment(api, env, "labelstudio-push", push, tmp_path / "worker-push.log")
        project_id = int(ls_client.find_project(title)["id"])
        (ml,) = ls_client.get("/api/ml", project=project_id)  # SAM answers the project's clicks
        assert ml["url"].rstrip("/") == backend_url.rstrip("/") and ml["state"] == "CO"
        tasks = list(ls_client.iter_tasks(project_id))
        assert sorted(t["data"]["image_id"] for t in tasks) == sorted(images["image_id"])
        assert {(t["data"]["round"], t["data"]["stage"]) for t in tasks} == {(1, "assisted_manual")}

        # A person labels one mask in each image, in the browser.
        for i, task in enumerate(tasks):
            mask = np.zeros((48, 64), bool)
            mask[4 + i : 20 + i, 8:40] = True
            result = project.brush_result(mask, result_id=f"p{i}")
            _post_as_browser(ls_client, project_id, task["id"], [result], lead_time=20.0)

        sync = {"params": {"project": title, "retrain_threshold": 2}}
        server_mod.run_deployment(api, env, "labelstudio-sync", sync, tmp_path / "worker-sync.log")
        masks = pd.read_parquet(tmp_path / "store" / "masks")  # plain pandas, no engine code
        assert len(masks) == 2 and set(masks["source"]) == {"human"}
        assert set(masks["image_id"]) == set(images["image_id"]) and set(masks["round"].astype(int)) == {1}

        runs = server_mod.deployment_runs(api, "retrain", timeout=120)
        assert runs, "the due sync started no retrain run"
        assert int(runs[0]["parameters"]["params"]["round"]) == 1
    finally:
        server_mod.stop_server(server)
        backend.shutdown()
        backend.server_close()
