"""Several writer processes at once, and a writer SIGKILLed mid-write: the dataset stays whole and consistent."""

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stores import Store

REPO = Path(__file__).resolve().parents[2]

# The child writes each (df, round, stage, shard) job in turn, printing "ready" once imports are done.
WRITER = """
import os, pickle, sys, time
import stores.fsio
from stores import Store
if os.environ.get("SLOW_DISK"):  # widen the window between a complete temp file and its rename, so kills land there
    fsync = os.fsync
    stores.fsio.os.fsync = lambda fd: (fsync(fd), time.sleep(0.05))
store = Store(sys.argv[1], storage_options=pickle.loads(bytes.fromhex(sys.argv[3])))
jobs = pickle.load(open(sys.argv[2], "rb"))
print("ready", flush=True)
for df, round, stage, shard in jobs:
    store.write_masks(df, round, stage, shard)
print("done", flush=True)
"""


def _start_writer(
    tmp_path: Path, url: str, jobs, name: str, options: dict | None = None, slow_disk: bool = False
) -> subprocess.Popen:
    jobs_file = tmp_path / f"{name}.pkl"
    jobs_file.write_bytes(pickle.dumps(jobs))
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env = dict(os.environ, PYTHONPATH=str(REPO), SLOW_DISK="1" if slow_disk else "")
    args = [sys.executable, str(script), url, str(jobs_file), pickle.dumps(options or {}).hex()]
    return subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env)


def _shard_frame(make_masks, shard: int, version: int, n: int) -> pd.DataFrame:
    """n masks for shard `shard`; version picks different masks so old and new content can be told apart."""
    frames = [
        make_masks(f"img{shard}-{i}", 8, seed=1000 * version + 10 * shard + i)[0] for i in range(n // 8)
    ]
    df = pd.concat(frames, ignore_index=True)
    df["annotator"] = f"shard{shard}-v{version}"
    return df


def _rows(store: Store) -> pd.DataFrame:
    cols = ["mask_id", "image_id", "counts", "annotator"]
    return store.masks()[cols].sort_values("mask_id").reset_index(drop=True)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["file", pytest.param("s3", marks=pytest.mark.integration)])
def test_concurrent_writers_of_different_shards_do_not_clobber(
    tmp_path, make_masks, backend, request, monkeypatch
):
    if backend == "file":
        store, options = Store(str(tmp_path / "engine")), {}
    else:
        endpoint, credentials = request.getfixturevalue("s3_endpoint")
        for key, value in credentials.items():
            monkeypatch.setenv(key, value)
        import s3fs

        options = {"endpoint_url": endpoint}
        s3fs.S3FileSystem(**options).mkdir("concurrent")
        store = Store("s3://concurrent/engine", storage_options=options)
    frames = {(w, s): _shard_frame(make_masks, 10 * w + s, 1, 16) for w in range(3) for s in range(2)}
    writers = [
        _start_writer(
            tmp_path,
            store.url,
            [(frames[w, s], 0, "fully_automatic", f"w{w}-{s}") for s in range(2)],
            f"w{w}",
            options,
        )
        for w in range(3)
    ]
    for proc in writers:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "done" in out
    got = _rows(store)
    expected = pd.concat(frames.values())
    assert len(got) == len(expected) == 3 * 2 * 16
    assert sorted(got["counts"]) == sorted(expected["counts"])


@pytest.mark.slow
def test_writer_killed_at_random_points_leaves_old_or_new_shards(tmp_path, make_masks):
    url = str(tmp_path / "engine")
    store = Store(url)
    shards = range(3)
    old = {s: _shard_frame(make_masks, s, 1, 400) for s in shards}
    new = {s: _shard_frame(make_masks, s, 2, 400) for s in shards}
    for s in shards:
        store.write_masks(old[s], 0, "fully_automatic", s)
    old_ids = {s: set(store.masks(image_id=list(old[s]["image_id"].unique()))["mask_id"]) for s in shards}
    jobs = [(new[s], 0, "fully_automatic", s) for s in shards]

    # Time one uninterrupted run into a fresh store: the reference rows and the window to kill in.
    reference = Store(str(tmp_path / "reference"))
    for s in shards:
        reference.write_masks(old[s], 0, "fully_automatic", s)
    proc = _start_writer(tmp_path, reference.url, jobs, "ref", slow_disk=True)
    assert proc.stdout.readline().strip() == "ready"
    t0 = time.monotonic()
    proc.communicate(timeout=60)
    window = time.monotonic() - t0
    expected = _rows(reference)

    rng = np.random.default_rng(0)
    attempts = 5
    for attempt in range(attempts):
        proc = _start_writer(tmp_path, url, jobs, f"kill{attempt}", slow_disk=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(float(rng.uniform(attempt, attempt + 1) * window / attempts))  # spread over the whole run
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        got = store.masks()
        for s in shards:
            annotators = set(got[got["image_id"].str.startswith(f"img{s}-")]["annotator"])
            assert annotators in ({f"shard{s}-v1"}, {f"shard{s}-v2"}), annotators  # never a mix, never empty
            ids = set(got[got["annotator"] == f"shard{s}-v1"]["mask_id"])
            assert ids in (set(), old_ids[s])  # old content complete when present
        for s in shards:  # new content is complete when present
            rows = got[got["annotator"] == f"shard{s}-v2"]
            assert len(rows) in (0, len(new[s]))
    # A half-written temp file (what a kill during the write itself leaves) is invisible to every reader.
    shard_dir = tmp_path / "engine" / "masks" / "round=0" / "stage=fully_automatic"
    (shard_dir / "_tmp-deadbeef-shard-0.parquet").write_bytes(b"PAR1 half written")
    assert len(store.masks()) == sum(len(f) for f in old.values())
    # Rerunning to the end gives exactly the rows of an uninterrupted run (temp leftovers are ignored).
    proc = _start_writer(tmp_path, url, jobs, "rerun")
    proc.communicate(timeout=60)
    got = _rows(store)
    pd.testing.assert_frame_equal(got, expected)
    plain = pd.read_parquet(url + "/masks")
    assert len(plain) == len(expected)
