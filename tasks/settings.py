"""Engine settings, read from environment variables so that one code path runs on a laptop and on a cluster.

Environment variables (all optional):

- ``SAM_ENGINE_HOME``: the engine's local state directory (default ``./.engine``). Holds the Prefect home
  (SQLite database), Ray's temporary directory and, by default, the store.
- ``SAM_ENGINE_STORE``: the store root URL (``file:///data/engine``, ``s3://bucket/engine``, ``memory://engine``;
  default ``file://$SAM_ENGINE_HOME/store``).
- ``SAM_ENGINE_RAY_ADDRESS``: address of a running Ray cluster (``ray://head:10001`` or ``auto``). Unset: a local
  Ray is started inside the process with ``SAM_ENGINE_RAY_NUM_CPUS`` CPUs (default 2).
- ``SAM_ENGINE_DEVICE``: torch device for in-process model work (default ``cuda`` when available, else ``cpu``).
- ``SAM_ENGINE_TORCH_THREADS``: torch CPU threads per process (default: torch's own choice; the demo uses 1,
  because on a busy machine several multi-threaded torch processes slow each other down many times over).
- ``PREFECT_API_URL``: a Prefect server to report runs to. Unset: Prefect starts a temporary local server per
  process. ``PREFECT_HOME`` defaults to ``$SAM_ENGINE_HOME/prefect`` and analytics are switched off
  (``PREFECT_SERVER_ANALYTICS_ENABLED=false``) because the engine must run without internet access.

Prefect reads its settings when it is first imported, so :func:`apply_prefect_defaults` runs from the
``tasks`` and ``flows`` package ``__init__`` before any module imports prefect.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def engine_home() -> Path:
    """The engine's local state directory (``SAM_ENGINE_HOME``, default ``./.engine``), as an absolute path."""
    return Path(os.environ.get("SAM_ENGINE_HOME", ".engine")).expanduser().resolve()


def apply_torch_threads(default: int | None = None) -> None:
    """Set torch's CPU threads from ``SAM_ENGINE_TORCH_THREADS`` (or ``default``; None leaves torch's choice)."""
    value = os.environ.get("SAM_ENGINE_TORCH_THREADS") or default
    if value is None:
        return
    try:
        threads = int(value)
    except ValueError:
        raise ValueError(f"SAM_ENGINE_TORCH_THREADS must be an integer, got {value!r}") from None
    import torch

    torch.set_num_threads(max(1, threads))


def apply_prefect_defaults() -> None:
    """Point Prefect at the engine's state dir and keep it offline, unless the user has set these already."""
    home = engine_home()
    os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
    # Prefect creates its home without parents and only warns when it cannot.
    Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Without a server the first flow call starts a temporary one; give it more than the default 20 s on a busy
    # 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    # Results of the engine's tasks live in the store, not in Prefect's result storage.
    os.environ.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "false")


@dataclass(frozen=True)
class EngineSettings:
    """A snapshot of the settings above. Build with :meth:`from_env`."""

    home: Path
    store_url: str
    ray_address: str | None
    ray_num_cpus: int
    device: str
    prefect_api_url: str | None

    @classmethod
    def from_env(cls) -> EngineSettings:
        home = engine_home()
        ray_cpus = os.environ.get("SAM_ENGINE_RAY_NUM_CPUS", "2")
        try:
            num_cpus = int(ray_cpus)
        except ValueError:
            raise ValueError(f"SAM_ENGINE_RAY_NUM_CPUS must be an integer, got {ray_cpus!r}") from None
        return cls(
            home=home,
            store_url=os.environ.get("SAM_ENGINE_STORE") or (home / "store").as_uri(),
            ray_address=os.environ.get("SAM_ENGINE_RAY_ADDRESS") or None,
            ray_num_cpus=num_cpus,
            device=os.environ.get("SAM_ENGINE_DEVICE") or _default_device(),
            prefect_api_url=os.environ.get("PREFECT_API_URL") or None,
        )


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
