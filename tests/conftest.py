"""Shared pytest setup. Area fixtures live in tests/<area>/conftest.py."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

# Tests run on 2 shared cores: keep BLAS/torch from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "2")

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _load_script(name: str):
    """scripts/<name>.py as a module: the scripts run as files and are not installed as a package."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses (prefect_server's) look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_script():
    """``load_script("retrain_spread")`` -> the module of scripts/retrain_spread.py."""
    return _load_script
