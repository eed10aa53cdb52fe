"""Every table round-trips on file://, memory:// and s3://, and plain pandas reads what the Store writes."""

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from stores import BBOX, CROP_BOX, Store


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values("mask_id").reset_index(drop=True)


def test_masks_round_trip_and_plain_pandas_reads_them(store, make_masks, images_frame):
    store.write_images(images_frame(["img1", "img2"]))
    df1, _ = make_masks("img1", 3, seed=1)
    df2, _ = make_masks("img2", 2, seed=2)
    store.write_masks(df1, round=0, stage="fully_automatic", shard="a")
    store.write_masks(df2, round=1, stage="semi_automatic", shard="b")

    got = store.masks()
    assert len(got) == 5
    assert set(got["round"]) == {0, 1}
    first = _sorted(store.masks(round=0))
    assert list(first["counts"].sort_values()) == sorted(df1["counts"])
    assert set(store.masks(image_id="img2")["image_id"]) == {"img2"}
    assert store.masks(source="human").empty

    plain = pd.read_parquet(
        store.table_url("masks"), filters=[("round", "=", 1)], storage_options=store.storage_options
    )
    assert sorted(plain["counts"]) == sorted(df2["counts"])
    assert set(plain["stage"].astype(str)) == {"semi_automatic"}


def test_area_and_bbox_are_computed_from_the_rle(store, make_masks):
    df, masks = make_masks("img1", 4, seed=3)
    store.write_masks(df, 0, "fully_automatic", 0)
    got = store.masks().set_index("counts").loc[df["counts"]]
    assert got["area"].tolist() == [int(m.sum()) for m in masks]
    for m, box in zip(masks, got[BBOX].to_numpy(), strict=True):
        ys, xs = np.nonzero(m)
        assert list(box) == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def test_rerunning_a_shard_replaces_its_rows(store, make_masks):
    df, _ = make_masks("img1", 4, seed=4)
    path = store.write_masks(df, 2, "fully_automatic", 7)
    assert store.write_masks(df, 2, "fully_automatic", 7) == path
    assert len(store.masks()) == 4
    store.write_masks(df.iloc[:1], 2, "fully_automatic", 7)
    assert len(store.masks()) == 1  # the shard now holds only the rerun's rows
    store.write_masks(df.iloc[1:], 2, "fully_automatic", 8)
    assert len(store.masks()) == 4
    store.write_masks(df.iloc[:0], 2, "fully_automatic", 8)
    assert len(store.masks()) == 1  # a rerun that found nothing empties its shard


def test_mask_ids_are_deterministic(store, make_masks):
    df, _ = make_masks("img1", 3, seed=5)
    store.write_masks(df, 0, "fully_automatic", 0)
    ids = sorted(store.masks()["mask_id"])
    other = Store(store.url, store.storage_options)
    other.write_masks(df, 0, "fully_automatic", 0)
    assert sorted(other.masks()["mask_id"]) == ids
    store.write_masks(df, 1, "fully_automatic", 0)
    assert set(store.masks(round=1)["mask_id"]).isdisjoint(ids)  # another round is another mask


def test_a_newer_row_supersedes_and_a_tombstone_deletes(store, make_masks):
    df, _ = make_masks("img1", 3, seed=6)
    store.write_masks(df, 0, "fully_automatic", 0)
    a, b, c = store.masks().sort_values("counts")["mask_id"]
    human, _ = make_masks("img1", 2, seed=60, source="human")
    human["supersedes"] = [a, None]
    human["annotator"] = "ann1"
    store.write_masks(human, 1, "assisted_manual", 0)
    edit_id = store.masks(round=1).set_index("counts").loc[human["counts"].iat[0], "mask_id"]
    # the edit is itself replaced (a chain), and c is withdrawn by a tombstone
    later, _ = make_masks("img1", 1, seed=61, source="human")
    later["supersedes"] = [edit_id]
    tomb = df[df["counts"] == store.masks().set_index("mask_id").loc[c, "counts"]].copy()
    tomb["source"], tomb["supersedes"], tomb["deleted"], tomb["mask_id"] = "human", c, True, "tombstone-c"
    store.write_masks(pd.concat([later, tomb]), 2, "assisted_manual", 0)

    current = set(store.masks()["mask_id"])
    assert a not in current and edit_id not in current and c not in current
    assert b in current and "tombstone-c" not in current
    assert len(current) == 3  # b, the untouched human mask, the latest edit
    assert set(store.masks(round=0)["mask_id"]) == {b}  # superseded across rounds
    everything = store.masks(current_only=False)
    assert {a, c, edit_id, "tombstone-c"} <= set(everything["mask_id"])  # nothing deleted in place

    # A read of a few columns drops and filters the same rows, without reading the rest.
    for kwargs in ({}, {"round": 2}, {"current_only": False}, {"source": "human", "image_id": "img1"}):
        full = store.masks(**kwargs)
        narrow = store.masks(columns=["mask_id", "area"], **kwargs)
        assert list(narrow.columns) == ["mask_id", "area", "round", "stage"]
        pd.testing.assert_frame_equal(
            narrow.reset_index(drop=True), full[list(narrow.columns)].reset_index(drop=True)
        )
    with pytest.raises(ValueError, match=r"no columns \['mask'\]"):
        store.masks(columns=["mask"])


def test_images_are_idempotent_by_image_id(store, images_frame):
    assert store.write_images(images_frame(["a", "b"])) == 2
    assert store.write_images(images_frame(["a", "b"])) == 0
    assert store.write_images(images_frame(["b", "c"])) == 1
    got = store.images()
    assert sorted(got["image_id"]) == ["a", "b", "c"]
    assert got.set_index("image_id").loc["a", "width"] == 32


def test_embeddings_round_trip_one_at_a_time(store):
    rng = np.random.default_rng(0)
    e1 = rng.standard_normal((16, 8, 8), dtype=np.float32)
    e2 = rng.standard_normal((1, 16, 8, 8), dtype=np.float32)
    store.put_embedding("img1", "tiny-v0", e1)
    store.put_embedding("img2", "tiny-v0", e2, dtype="float16")
    np.testing.assert_array_equal(store.get_embedding("img1", "tiny-v0"), e1)
    assert store.get_embedding("img2", "tiny-v0").dtype == np.float32
    np.testing.assert_allclose(store.get_embedding("img2", "tiny-v0"), e2[0], rtol=1e-3, atol=1e-4)
    assert store.has_embedding("img1", "tiny-v0") and not store.has_embedding("img1", "tiny-v1")
    assert store.embedded_image_ids("tiny-v0") == {"img1", "img2"}
    with pytest.raises(KeyError, match="img3"):
        store.get_embedding("img3", "tiny-v0")
    plain = pd.read_parquet(store.table_url("embeddings"), storage_options=store.storage_options)
    assert sorted(plain["image_id"]) == ["img1", "img2"]


def test_models_rounds_and_state(store):
    store.write_model({"model_version": "tiny-v1", "parent_version": "tiny-v0", "config": {"depth": 6}})
    store.write_model({"model_version": "tiny-v1", "parent_version": "tiny-v0", "metrics": {"miou": 0.5}})
    models = store.models()
    assert len(models) == 1 and models["metrics"].iat[0] == {"miou": 0.5}
    store.write_round({"round": 0, "stage": "fully_automatic", "masks": 10, "metrics": {"ap": 0.1}})
    store.write_round({"round": 0, "stage": "fully_automatic", "masks": 12})
    store.write_round({"round": 1, "stage": "fully_automatic", "masks": 5})
    assert store.rounds()["masks"].tolist() == [12, 5]
    assert store.read_state("labelstudio_sync", "project-1") is None
    store.write_state("labelstudio_sync", "project-1", {"cursor": 3})
    store.write_state("labelstudio_sync", "project-1", {"cursor": 9})
    store.write_state("labelstudio_sync", "project/2", {"cursor": 1})
    assert store.read_state("labelstudio_sync", "project-1") == {"cursor": 9}
    assert sorted(store.read_state("labelstudio_sync")["key"]) == ["project-1", "project/2"]


def test_empty_store_reads_empty_frames(store):
    assert store.masks().empty and "mask_id" in store.masks().columns
    assert store.images().empty and store.models().empty and store.rounds().empty


def test_delete_masks_writes_tombstones_and_keeps_the_rows(store, make_masks):
    df, _ = make_masks("img1", 3, seed=7)
    store.write_masks(df, 0, "fully_automatic", 0)
    doomed = sorted(store.masks()["mask_id"])[:2]
    store.delete_masks(doomed, 1, "assisted_manual", "review", annotator="ann1")
    assert set(store.masks()["mask_id"]).isdisjoint(doomed) and len(store.masks()) == 1
    everything = store.masks(current_only=False)
    assert set(doomed) <= set(everything["mask_id"])
    assert everything["deleted"].sum() == 2
    with pytest.raises(KeyError, match="nope"):
        store.delete_masks(["nope"], 1, "assisted_manual", "review")


def test_round_and_stage_columns_must_agree_with_the_shard(store, make_masks):
    df, _ = make_masks("img1", 1, seed=8)
    store.write_masks(df.assign(round=2, stage="x"), 2, "x", 0)
    with pytest.raises(ValueError, match="column 'round' disagrees with round=3"):
        store.write_masks(df.assign(round=2), 3, "x", 0)


def test_masks_are_lz4_compressed_but_counts_are_not(local_store, make_masks):
    """So that reading a round is not dominated by unpacking (benchmarks/bench_store.py measures the read time)."""
    df, _ = make_masks("img1", 3, seed=1)
    path = local_store.write_masks(df, round=0, stage="fully_automatic", shard="a")
    meta = pq.ParquetFile(path).metadata.row_group(0)
    codecs = {meta.column(i).path_in_schema: meta.column(i).compression for i in range(meta.num_columns)}
    assert codecs.pop("counts") == "UNCOMPRESSED" and set(codecs.values()) == {"LZ4"}
    assert sorted(pd.read_parquet(path)["counts"]) == sorted(df["counts"])


def test_boxes_and_points_are_flat_columns_and_either_form_writes_the_same_rows(local_store, make_masks):
    """Version 2 stores bbox/crop_box as floats and point_coords as JSON: no per-row arrays in pandas."""
    df, _ = make_masks("img1", 3, seed=9)
    df["crop_box"] = [[0.0, 0.0, 32.0, 24.0], None, [4.0, 2.0, 16.0, 12.0]]
    df["point_coords"] = [df["point_coords"].iat[0], [[1.5, 2.0], [3.0, 4.25]], []]
    path = local_store.write_masks(df, 0, "fully_automatic", "lists")
    plain = pd.read_parquet(path)
    assert {str(plain[c].dtype) for c in BBOX + CROP_BOX} == {"float64"}
    assert [json.loads(p) for p in plain["point_coords_json"]] == df["point_coords"].tolist()
    assert plain.loc[0, CROP_BOX].tolist() == [0.0, 0.0, 32.0, 24.0]
    assert plain.loc[1, CROP_BOX].isna().all()  # no crop box given
    # what a reader gets back writes the same rows again, in the flat form
    again = pq.read_table(local_store.write_masks(plain, 0, "fully_automatic", "flat")).to_pandas()
    pd.testing.assert_frame_equal(again, plain)
