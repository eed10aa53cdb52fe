"""Fixtures for the Label Studio tests: a real Label Studio server (one per session), stores, a tiny SAM."""

from __future__ import annotations

import fcntl
import os
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from stores import Store
from stores.fsio import free_port
from tasks.labelstudio import server
from tasks.labelstudio.client import LabelStudioClient

TEST_HOME = Path(
    os.environ.get("SAM_ENGINE_LS_TEST_HOME") or server.REPO_ROOT / ".engine" / "labelstudio-test"
)


@pytest.fixture(scope="session")
def ls_server(tmp_path_factory):
    """A real Label Studio on a free port, stopped at the end of the session.

    The first install of its venv takes about a minute; the first start on a new data dir runs Label Studio's
    database migrations (30 s, up to 2 minutes on busy cores), a later start 3-5 s. So the data dir is kept in
    .engine/labelstudio-test between sessions (tests use fresh project titles and image folders each time); a
    session that finds it locked by another session starts its own server on a temporary data dir.
    """
    TEST_HOME.mkdir(parents=True, exist_ok=True)
    lock = open(TEST_HOME / ".session.lock", "w")  # noqa: SIM115 - held for the whole session
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        home = TEST_HOME
    except BlockingIOError:
        home = tmp_path_factory.mktemp("labelstudio-home")
    info = server.up(port=free_port(), home=home, timeout=300)
    try:
        yield info
    finally:
        server.down(home)
        lock.close()


@pytest.fixture(scope="session")
def run_id():
    """A suffix that keeps this session's projects and image folders apart from earlier sessions'."""
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def ls_client(ls_server):
    client = LabelStudioClient(ls_server.url, ls_server.token, retries=1, backoff=0.1)
    yield client
    client.close()


@pytest.fixture(scope="session")
def document_root(ls_server):
    return server.status(ls_server.home)["document_root"]


@pytest.fixture
def store(tmp_path):
    return Store(f"file://{tmp_path}/store")


def make_images(
    store: Store, folder, n: int = 2, height: int = 48, width: int = 64, prefix: str = "img"
) -> pd.DataFrame:
    """Write n random RGB PNGs under folder, register them in the store's images table, return the rows."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    rng = np.random.default_rng(0)
    for i in range(n):
        path = folder / f"{prefix}{i}.png"
        Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8)).save(path)
        rows.append(
            {
                "image_id": f"{prefix}{i}",
                "uri": str(path),
                "width": width,
                "height": height,
                "sha256": f"h{i}",
                "split": "train",
            }
        )
    store.write_images(pd.DataFrame(rows))
    return pd.DataFrame(rows)


@pytest.fixture(scope="session")
def tiny_sam():
    import torch

    from tasks.labelstudio.ml_backend import build_model

    torch.manual_seed(0)
    model = build_model("tiny")
    model.eval()
    return model
