import os
import shutil
import tempfile

import pytest

from sam_core.checkpoint import load_weights, read_checkpoint
from sam_core.train import TrainConfig, build_model
from sam_core.train_data import SyntheticDataset


@pytest.mark.slow
def test_two_worker_ray_train_run_on_cpu_writes_a_checkpoint_with_lineage(tmp_path):
    ray = pytest.importorskip("ray")
    from tasks.ray_train import train_on_ray, write_checkpoint

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=ray_dir, log_to_driver=False)
    try:
        config = TrainConfig(
            steps=2, masks_per_image=1, correction_points=1, no_point_iterations=0, log_every=0
        )
        progress = []
        result = train_on_ray(
            config,
            SyntheticDataset("train", count=20),
            num_workers=2,
            storage_path=str(tmp_path / "runs"),
            parent_version="v0",
            data_round=3,
            on_progress=lambda step, total: progress.append((step, total)),
        )
    finally:
        ray.shutdown()
        shutil.rmtree(ray_dir, ignore_errors=True)
    ckpt = read_checkpoint(result["checkpoint_bytes"])
    assert ckpt["metadata"]["steps"] == 2
    # The steps come back from the workers (the last call reads what rank 0 reported), in order.
    assert progress and progress[-1] == (2, 2)
    assert [step for step, _ in progress] == sorted(step for step, _ in progress)
    assert ckpt["config"]["metadata"]["parent_version"] == "v0"
    lineage = result["lineage"]
    assert lineage["parent_version"] == "v0" and lineage["data_round"] == 3 and lineage["num_workers"] == 2
    assert lineage["config"]["steps"] == 2 and lineage["metrics"]["steps"] == 2
    load_weights(build_model("tiny"), result["checkpoint_bytes"])
    uri = write_checkpoint(result["checkpoint_bytes"], f"file://{tmp_path}/models/v1.pt")
    assert read_checkpoint(uri)["metadata"]["steps"] == 2
