"""Retrain SAM on Ray Train: the interactive trainer of sam_core.train, data-parallel over N workers.

Every worker builds the same initial model (same seed), draws its own samples (seed + rank), and averages
gradients with the others after each backward pass (an all-reduce over torch.distributed), so the replicas stay
identical without wrapping the model: the trainer calls the encoder and decoder directly, which a
DistributedDataParallel wrapper would not see. Rank 0 reports the checkpoint; the caller gets its bytes plus the
lineage (parent version, data round, config, metrics) to record in the models table.

    result = train_on_ray(TrainConfig(steps=100), SyntheticDataset("train"), num_workers=2)
    store.write_model({..., **result["lineage"]}); open(path, "wb").write(result["checkpoint_bytes"])
"""

from __future__ import annotations

import contextvars
import dataclasses
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from sam_core.train import TrainConfig, Trainer, build_model
from tasks.progress import OnProgress

CHECKPOINT_NAME = "checkpoint.pt"
POLL_SECONDS = 0.5  # how often the driver reads the workers' step count while fit() blocks


class StepCounter:
    """The last step rank 0 finished, held by a small Ray actor: the workers' one channel back to the driver
    while ``TorchTrainer.fit()`` blocks it (Ray Train's callbacks run in its controller, not in the driver)."""

    def __init__(self) -> None:
        self.step = 0

    def set(self, step: int) -> None:
        self.step = max(self.step, step)

    def get(self) -> int:
        return self.step


def _watch_steps(counter, total: int, on_progress: OnProgress, stop: threading.Event) -> None:
    """Poll the counter until ``stop`` is set, calling on_progress(step, total) when the step moves."""
    import ray

    shown = -1
    while not stop.wait(POLL_SECONDS):
        try:
            step = ray.get(counter.get.remote(), timeout=10)
        except Exception:  # a slow or lost poll only delays the bar; fit() reports the run's real errors
            continue
        if step != shown:
            shown = step
            on_progress(step, total)


def average_gradients(model: torch.nn.Module) -> None:
    """All-reduce every trainable parameter's gradient to its mean over the workers (no-op without a group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    world = dist.get_world_size()
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if p.grad is None:  # every rank must join every all-reduce, used parameter or not
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad /= world


def _train_loop(loop_config: dict) -> None:
    """Runs on each Ray Train worker."""
    import ray.train

    context = ray.train.get_context()
    rank = context.get_world_rank()
    torch.set_num_threads(loop_config.get("threads_per_worker", 1))
    config = TrainConfig(**loop_config["config"])
    torch.manual_seed(config.seed)  # identical initial weights on every worker
    model = build_model(config.model)
    config.seed = config.seed + rank  # but different samples
    trainer = Trainer(config, loop_config["dataset"], model, after_backward=average_gradients)
    counter = loop_config.get("step_counter") if rank == 0 else None
    last = {}
    for _ in range(config.steps):
        last = trainer.step()
        if counter is not None:
            counter.set.remote(trainer.step_index)  # fire and forget: the driver polls
    metrics = {"loss": last.get("loss"), "iou_last": last.get("iou_last"), "steps": trainer.step_index}
    metrics["skipped"] = dict(trainer.skipped)
    if rank == 0:
        with tempfile.TemporaryDirectory() as tmp:
            trainer.save(Path(tmp) / CHECKPOINT_NAME, metrics=metrics)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
    else:
        ray.train.report(metrics)


def train_on_ray(
    config: TrainConfig,
    dataset: Sequence,
    num_workers: int = 2,
    use_gpu: bool = False,
    storage_path: str | None = None,
    parent_version: str | None = None,
    data_round: int | None = None,
    threads_per_worker: int = 1,
    on_progress: OnProgress | None = None,
) -> dict:
    """Train with Ray Train's TorchTrainer; returns {"checkpoint_bytes", "metrics", "lineage"}.

    dataset must pickle (it travels to every worker): a sequence of (image HxWx3 uint8, masks list of HxW
    bool), e.g. SyntheticDataset or a list. Ray must already be initialised (``ray.init``) or it is started
    locally. lineage holds parent_version, data_round, config, metrics, num_workers, wall_seconds.
    on_progress(step, steps) is called from a driver thread as rank 0's steps finish (read from a StepCounter
    actor every POLL_SECONDS), and once more with the count the workers reached when fit() returns.
    """
    import ray

    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    config.validate()
    config_dict = dataclasses.asdict(config)
    config_dict["metadata"] = {**config.metadata, "parent_version": parent_version, "data_round": data_round}
    started = time.monotonic()
    counter = watcher = None
    stop = threading.Event()
    if on_progress is not None:
        counter = ray.remote(num_cpus=0)(StepCounter).remote()
        # The callback may update a Prefect progress artifact, which needs the run's context in the thread.
        context = contextvars.copy_context()
        watcher = threading.Thread(
            target=context.run,
            args=(_watch_steps, counter, config.steps, on_progress, stop),
            name="ray-train-progress",
            daemon=True,
        )
        watcher.start()
    try:
        loop_config = {
            "config": config_dict,
            "dataset": dataset,
            "threads_per_worker": threads_per_worker,
            "step_counter": counter,
        }
        checkpoint_bytes, result = _fit(loop_config, num_workers, use_gpu, storage_path)
        if counter is not None:
            stop.set()
            watcher.join()
            on_progress(ray.get(counter.get.remote()), config.steps)
    finally:
        stop.set()
        if counter is not None:
            ray.kill(counter)
    metrics = dict(result.metrics or {})
    lineage = {
        "parent_version": parent_version,
        "data_round": data_round,
        "config": config_dict,
        "metrics": metrics,
        "num_workers": num_workers,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    return {"checkpoint_bytes": checkpoint_bytes, "metrics": metrics, "lineage": lineage}


def _fit(loop_config: dict, num_workers: int, use_gpu: bool, storage_path: str | None):
    """Run the TorchTrainer to the end; (rank 0's checkpoint bytes, the Ray Train result)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    with tempfile.TemporaryDirectory(prefix="sam_ray_train_") as tmp:
        trainer = TorchTrainer(
            _train_loop,
            train_loop_config=loop_config,
            scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
            run_config=RunConfig(
                storage_path=storage_path or tmp, name=f"sam_train_{os.getpid()}_{int(time.time())}"
            ),
        )
        result = trainer.fit()
        if result.checkpoint is None:
            raise RuntimeError(f"Ray Train finished without a checkpoint (error: {result.error})")
        with result.checkpoint.as_directory() as directory:
            return (Path(directory) / CHECKPOINT_NAME).read_bytes(), result


def write_checkpoint(checkpoint_bytes: bytes, uri: str) -> str:
    """Write checkpoint bytes to a path or fsspec URL (temporary name, then move) and return the URI, which is
    what the models table's checkpoint_uri records."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)
    parent, name = path.rsplit("/", 1) if "/" in path else ("", path)
    tmp = f"{parent}/.{name}.tmp" if parent else f".{name}.tmp"
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(tmp, "wb") as f:
        f.write(checkpoint_bytes)
    fs.mv(tmp, path)
    return uri
