"""Each table carries its own schema version; masks files of version 1 are refused by name, and upgraded."""

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
    """A masks table of the current version in the form masks version 1 stored it: boxes and points as lists."""
    flat = set(BBOX) | set(CROP_BOX) | {"point_coords_json"}
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


def test_tables_have_their_own_versions_and_masks_is_at_2():
    assert (
        SCHEMA_VERSIONS["masks"] == 2 and SCHEMA_VERSIONS["images"] == 1
    )  # images files of before still read


def test_a_version_1_masks_file_is_refused_by_name_with_the_way_to_upgrade(old_store):
    store, path, _, _ = old_store
    with pytest.raises(
        SchemaMismatchError,
        match=rf"{path}: file holds table 'masks' schema version '1', expected table 'masks' schema version 2; "
        r"Store\(<root>\)\.upgrade_masks\(\) rewrites",
    ):
        store.masks()
    with pytest.raises(SchemaMismatchError, match=path):  # which masks are current depends on every file
        store.masks(round=0)


def test_upgrade_masks_rewrites_version_1_files_with_the_same_rows(old_store):
    store, path, round_0, written = old_store
    assert store.upgrade_masks() == [path]
    assert read_parquet_file(store.fs, path, "masks").equals(written)  # what version 2 itself wrote
    assert store.upgrade_masks() == []  # nothing left to do
    pd.testing.assert_frame_equal(store.masks(round=0), round_0)  # current files are left as they were
    plain = pd.read_parquet(store.table_url("masks"), storage_options=store.storage_options)
    assert len(plain) == 5 and not plain["bbox_x"].isna().any()


def test_a_masks_file_of_an_unknown_version_is_refused_and_not_upgraded(old_store):
    store, path, _, written = old_store
    _put(store, path, _as_version_1(written, version=b"3"))
    with pytest.raises(
        SchemaMismatchError, match=rf"{path}: file holds table 'masks' schema version '3', expected"
    ):
        store.masks()
    with pytest.raises(SchemaMismatchError, match=r"upgrade_masks cannot turn into masks schema version 2"):
        store.upgrade_masks()


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
