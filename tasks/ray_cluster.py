"""Connect to Ray: the cluster named by ``SAM_ENGINE_RAY_ADDRESS``, or a small local Ray inside this process.

A local Ray gets ``SAM_ENGINE_RAY_NUM_CPUS`` CPUs (default 2), no dashboard, its own temporary directory under
``$SAM_ENGINE_HOME/ray`` (Ray's default temp folder may be shared with other users of the machine) and
``RAY_AUTH_MODE=disabled`` (token auth is for clusters, and a local head has nobody to authenticate).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from tasks.settings import EngineSettings


def ensure_ray(settings: EngineSettings | None = None) -> None:
    """Initialise Ray once per process; a no-op when Ray is already up.

    Raises:
        ConnectionError: ``SAM_ENGINE_RAY_ADDRESS`` is set but nothing answers there.
    """
    import ray

    if ray.is_initialized():
        return
    settings = settings or EngineSettings.from_env()
    if settings.ray_address:
        try:
            ray.init(address=settings.ray_address, log_to_driver=False)
        except Exception as exc:  # Ray raises several types here; the user needs the address either way
            raise ConnectionError(
                f"cannot reach the Ray cluster at SAM_ENGINE_RAY_ADDRESS={settings.ray_address!r}: {exc}"
            ) from exc
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Unix sockets live under the temp dir and their paths must stay short (107 bytes), so a deep project path
    # falls back to a short private folder under /tmp.
    temp_dir = settings.home / "ray"
    if len(str(temp_dir)) > 60:
        temp_dir = Path(tempfile.gettempdir()) / f"sam-engine-ray-{os.getuid()}"
    temp_dir.mkdir(parents=True, exist_ok=True)
    ray.init(
        num_cpus=settings.ray_num_cpus,
        include_dashboard=False,
        _temp_dir=str(temp_dir),
        log_to_driver=False,
        configure_logging=False,
    )


def cluster_gpus() -> float:
    """GPUs the Ray cluster offers (0.0 on CPU-only clusters). Call after :func:`ensure_ray`."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def shutdown_ray() -> None:
    """Stop the local Ray this process started (a no-op when none is running)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
