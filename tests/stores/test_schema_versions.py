"""Each table carries its own schema version; masks files of versions 1 and 2 are refused by name, and upgraded."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stores import BBOX, CROP_BOX, SCHEMA_VERSIONS, SchemaMismatchError
from stores.fsio import read_parquet_file
from stores.schemas import MASKS, META_TABLE, META_VERSION


def _as_version_1(table: pa.Table, version: bytes = b"1") -> pa.Table:
    """A masks table of the current version in the form masks version 1 stored it: boxes and points as lists,
    no phrase."""
    flat = set(BBOX) | set(CROP_BOX) | {"point_coords_json", "phrase"}
    crop_box = np.stack([table[c].to_numpy() for c in CROP_BOX], axis=1)
    lists = {
        "bbox": pa.array(
            np.stack([table[c].to_numpy() for c in BBOX], axis=1).tolist(), type=pa.list_(pa.float64(), 4)
        ),
        "point_coords": pa.array(
            [None if t is None else json.loads(t) for t in table["point_coords_json"].to_pylist()],
            type=pa.list_(pa.list_(pa.float64())),
        ),
        "crop_box": pa.array(
            [None if np.isnan(box).all() else box.tolist() for box in crop_box], type=pa.list_(pa.float64())
        ),
    }
    columns = {}
    for f in MASKS:  # version 1's column order: each list where its first flat column is now
        name = {"bbox_x": "bbox", "point_coords_json": "point_coords", "crop_box_x": "crop_box"}.get(f.name)
        if name is not None:
            columns[name] = lists[name]
        elif f.name not in flat:
            columns[f.name] = table[f.name]
    meta = {META_TABLE: b"masks", META_VERSION: version}
    return pa.table(columns).replace_schema_metadata(meta)


def _as_version_2(table: pa.Table) -> pa.Table:
    """A masks table of the current version in the form masks version 2 stored it: every column but phrase."""
    meta = {META_TABLE: b"masks", META_VERSION: b"2"}
    return table.drop_columns(["phrase"]).replace_schema_metadata(meta)


def _put(store, path: str, table: pa.Table) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    store.fs.pipe_file(path, sink.getvalue().to_pybytes())


@pytest.fixture
def old_store(store, make_masks, images_frame):
    """A store whose masks shard 'b' was written by masks schema version 1, beside a current shard 'a'."""
    store.write_images(images_frame(["img1", "img2"]))
    current, _ = make_masks("img1", 2, seed=1)
    store.write_masks(current, 0, "fully_automatic", "a")
    df, _ = make_masks("img2", 3, seed=2)
    df["crop_box"] = [[0.0, 0.0, 32.0, 24.0], None, [1.0, 2.0, 3.0, 4.0]]
    df["point_coords"] = [df["point_coords"].iat[0], [], [[1.5, 2.0], [3.0, 4.0]]]
    df["clicks"] = [None, 3, None]
    df["external_id"] = [None, 2**60 + 1, 7]  # beyond float64's exact integers
    path = store.write_masks(df, 1, "assisted_manual", "b")
    written, round_0 = read_parquet_file(store.fs, path, "masks"), store.masks(round=0)
    _put(store, path, _as_version_1(written))
    return store, path, round_0, written


@pytest.fixture
def v2_store(store, make_masks, images_frame):
    """A store whose masks shards 'b' and 'c' were written by masks schema version 2 (no phrase), beside a
    current shard 'a' of text-prompted masks."""
    store.write_images(images_frame(["img1", "img2", "img3"]))
    current, _ = make_masks("img1", 2, seed=1)
    current["phrase"] = "every red ring"
    store.write_masks(current, 0, "fully_automatic", "a")
    paths, written = [], []
    for shard, image_id, seed in (("b", "img2", 2), ("c", "img3", 3)):
        df, _ = make_masks(image_id, 3, seed=seed)
        df["external_id"] = [None, 2**60 + 1, 7]  # beyond float64's exact integers
        paths.append(store.write_masks(df, 1, "assisted_manual", shard))
        written.append(read_parquet_file(store.fs, paths[-1], "masks"))
    round_0 = store.masks(round=0)
    for path, table in zip(paths, written, strict=True):
        _put(store, path, _as_version_2(table))
    return store, paths, written, round_0


def test_tables_have_their_own_versions_and_masks_is_at_3():
    assert (
        SCHEMA_VERSIONS["masks"] == 3 and SCHEMA_VERSIONS["images"] == 1
    )  # images files of before still read


@pytest.fixture(params=[1, 2])
def older_file(request, store):  # store: its filesystems parametrize this fixture too
    """(store, the path of one of its masks files written by schema version 1 or 2, that version)."""
    if request.param == 1:
        store, path, _, _ = request.getfixturevalue("old_store")
    else:
        store, (path, _), _, _ = request.getfixturevalue("v2_store")
    return store, path, request.param


def test_a_masks_file_of_version_1_or_2_is_refused_by_name_with_the_way_to_upgrade(older_file):
    store, path, version = older_file
    with pytest.raises(
        SchemaMismatchError,
        match=rf"{path}: file holds table 'masks' schema version '{version}', expected table 'masks' schema "
        rf"version 3; Store\(<root>\)\.upgrade_masks\(\) rewrites the store's version-{version} masks files",
    ):
        store.masks()
    with pytest.raises(SchemaMismatchError, match=path):  # which masks are current depends on every file
        store.masks(round=0)


def test_upgrade_masks_rewrites_version_1_files_with_the_same_rows(old_store):
    store, path, round_0, written = old_store
    assert store.upgrade_masks() == [path]
    upgraded = read_parquet_file(store.fs, path, "masks")
    assert upgraded.equals(written)  # what version 3 itself wrote
    assert upgraded["phrase"].null_count == len(upgraded)  # no mask of version 1 answered a phrase
    assert store.upgrade_masks() == []  # nothing left to do
    pd.testing.assert_frame_equal(store.masks(round=0), round_0)  # current files are left as they were
    plain = pd.read_parquet(store.table_url("masks"), storage_options=store.storage_options)
    assert len(plain) == 5 and not plain["bbox_x"].isna().any()


def test_a_masks_file_of_an_unknown_version_is_refused_and_not_upgraded(old_store):
    store, path, _, written = old_store
    _put(store, path, _as_version_1(written, version=b"4"))
    with pytest.raises(
        SchemaMismatchError, match=rf"{path}: file holds table 'masks' schema version '4', expected"
    ):
        store.masks()
    with pytest.raises(SchemaMismatchError, match=r"upgrade_masks cannot turn into masks schema version 3"):
        store.upgrade_masks()


def test_upgrade_masks_rewrites_version_2_files_with_the_same_rows_and_a_null_phrase(v2_store):
    store, paths, written, round_0 = v2_store
    assert sorted(store.upgrade_masks()) == sorted(paths)
    for path, before in zip(paths, written, strict=True):
        assert read_parquet_file(store.fs, path, "masks").equals(before)  # ids, times, exact int64 ids kept
    assert store.upgrade_masks() == []  # a rerun does nothing twice
    pd.testing.assert_frame_equal(store.masks(round=0), round_0)  # the current shard is left as it was
    plain = pd.read_parquet(store.table_url("masks"), storage_options=store.storage_options)
    by_round = plain.groupby("round", observed=True)["phrase"]
    assert by_round.apply(lambda p: p.isna().all()).to_dict() == {0: False, 1: True}
    assert set(plain.loc[plain["round"] == 0, "phrase"]) == {"every red ring"}


def test_an_upgrade_that_crashes_midway_leaves_whole_files_and_a_rerun_finishes_it(v2_store, monkeypatch):
    store, paths, written, _ = v2_store
    real_write, calls = store._write, []

    def crash_on_second(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(store, "_write", crash_on_second)
    with pytest.raises(OSError, match="disk full"):
        store.upgrade_masks()
    monkeypatch.undo()
    versions = sorted(pq.read_schema(store.fs.open(p)).metadata[META_VERSION] for p in paths)
    assert versions == [b"2", b"3"]  # one file upgraded, the other untouched, neither half-written
    (left,) = store.upgrade_masks()
    assert store.upgrade_masks() == [] and left in paths
    for path, before in zip(paths, written, strict=True):
        assert read_parquet_file(store.fs, path, "masks").equals(before)


def test_the_cli_upgrade_command_rewrites_old_files_and_then_finds_none(old_store):
    from typer.testing import CliRunner

    from flows.cli import app

    store, path, round_0, _ = old_store
    if store.storage_options:  # the CLI takes credentials from the environment, not from a fixture
        pytest.skip("the s3 fixture's endpoint is not in the environment")
    runner = CliRunner()
    result = runner.invoke(app, ["upgrade", "--store", store.url])
    assert result.exit_code == 0 and "upgraded 1 masks file(s)" in result.output, result.output
    pd.testing.assert_frame_equal(store.masks(round=0), round_0)
    result = runner.invoke(app, ["upgrade", "--store", store.url])
    assert result.exit_code == 0 and "every masks file is current" in result.output, result.output


def _candidates(n: int = 3) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image_id": "x",
            "predicted_iou": np.linspace(0.9, 0.5, n, dtype=np.float32),
            "stability_score": np.float32(0.95),
            "area": np.arange(n, dtype=np.int64) + 10,
            "image_area": 100,
            "x0": np.zeros(n, np.float32),
            "y0": np.zeros(n, np.float32),
            "x1": np.full(n, 5, np.float32),
            "y1": np.full(n, 5, np.float32),
            "best_iou": np.float32(0.8),
            "best_gt": np.arange(n, dtype=np.int64),
        }
    )


def test_a_calibration_file_carries_its_stamp_and_an_unstamped_older_one_still_reads(tmp_path):
    from stores import Store

    store = Store(tmp_path.as_uri())
    assert not store.has_calibration("v1")
    with pytest.raises(KeyError, match="'v1' has no calibration"):
        store.calibration("v1")
    url = store.write_calibration("v1", _candidates())
    assert url.endswith("/calibration/v1.parquet") and store.has_calibration("v1")
    stamp = pq.read_schema(tmp_path / "calibration" / "v1.parquet").metadata
    assert stamp[META_TABLE] == b"calibration" and stamp[META_VERSION] == b"1"
    pd.testing.assert_frame_equal(store.calibration("v1"), _candidates(), check_dtype=False)
    assert store.calibration("v1")["predicted_iou"].dtype == np.float32

    # Written by the calibrate task before the stamp: the same columns, no metadata of ours.
    pq.write_table(
        pa.Table.from_pandas(_candidates(2), preserve_index=False), tmp_path / "calibration" / "v0.parquet"
    )
    assert len(store.calibration("v0")) == 2
    # Another table's file under calibration/ is refused by name.
    pq.write_table(
        pa.table({"a": [1]}).replace_schema_metadata({META_TABLE: b"masks", META_VERSION: b"2"}),
        tmp_path / "calibration" / "bad.parquet",
    )
    with pytest.raises(SchemaMismatchError, match="bad.parquet"):
        store.calibration("bad")


def test_a_checkpoint_is_published_under_checkpoints_and_its_url_returned(tmp_path):
    from stores import Store

    store = Store(tmp_path.as_uri())
    url = store.write_checkpoint("r1", b"weights")
    assert (
        url.endswith("/checkpoints/r1.pt") and (tmp_path / "checkpoints" / "r1.pt").read_bytes() == b"weights"
    )
    assert Store(tmp_path.as_uri(), create=False).url == store.url  # a store of checkpoints alone is a store
