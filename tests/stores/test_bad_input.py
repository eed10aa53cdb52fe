"""Bad input gets a clear error naming the file or record, and leaves the store exactly as it was."""

import json
import re

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stores import (
    BadRecordError,
    CorruptFileError,
    PathEscapeError,
    SchemaMismatchError,
    Store,
    StoreNotFoundError,
    UnknownProtocolError,
    import_coco,
    import_sa1b,
)


def snapshot(store) -> dict[str, bytes]:
    store.fs.invalidate_cache()
    return {p: store.fs.cat_file(p) for p in store.fs.find(store.root)}


@pytest.fixture
def seeded(store, make_masks, images_frame):
    store.write_images(images_frame(["img1"]))
    df, _ = make_masks("img1", 2, seed=1)
    store.write_masks(df, 0, "fully_automatic", 0)
    return store


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ("", "counts is empty"),
        ("ab\x01", "outside the COCO RLE alphabet"),
        ("PP", "ends in the middle of a run"),
        ("0" * 9 + "P", "ends in the middle"),
    ],
)
def test_malformed_rle_is_refused_naming_the_row(seeded, make_masks, counts, message):
    before = snapshot(seeded)
    df, _ = make_masks("img1", 3, seed=2)
    df.loc[1, "counts"] = counts
    with pytest.raises(BadRecordError, match=rf"row 1 image_id=img1: .*{message}"):
        seeded.write_masks(df, 0, "fully_automatic", 1)
    assert snapshot(seeded) == before


@pytest.mark.parametrize(
    ("shape", "spoil", "message"),
    [
        (  # the RLE covers 24 x 32 pixels
            {"seed": 3},
            lambda df: df.assign(height=[25, 24]),
            r"row 0 image_id=img1: counts covers 768 pixels but the mask is 25 x 32",
        ),
        (  # a valid RLE, but img1 is 24 x 32
            {"height": 32, "width": 24, "seed": 4},
            lambda df: df,
            r"row 0 image_id=img1: mask is 32 x 24 but the image is 24 x 32",
        ),
        ({"seed": 5}, lambda df: df.assign(area=[None, 1]), r"row 1 image_id=img1: area=1 but counts holds"),
        ({"seed": 5}, lambda df: df.assign(source="robot"), r"row 0 image_id=img1: source='robot'"),
        ({"seed": 5}, lambda df: df.drop(columns="counts"), r"missing required columns \['counts'\]"),
    ],
    ids=["rle_short_of_its_size", "size_differs_from_the_image", "wrong_area", "unknown_source", "no_counts"],
)
def test_a_bad_masks_row_is_refused_naming_it(seeded, make_masks, shape, spoil, message):
    before = snapshot(seeded)
    df, _ = make_masks("img1", 2, **shape)
    with pytest.raises(BadRecordError, match=message):
        seeded.write_masks(spoil(df), 0, "fully_automatic", 1)
    assert snapshot(seeded) == before


def test_coco_file_with_missing_fields_is_refused_naming_the_record(seeded, tmp_path):
    before = snapshot(seeded)
    good_ann = {"id": 7, "image_id": 1, "segmentation": {"size": [24, 32], "counts": "0`0"}}
    image = {"id": 1, "file_name": "img9.jpg", "width": 32, "height": 24}
    cases = [
        ({"annotations": []}, r"missing list 'images'"),
        (
            {"images": [{"id": 1, "file_name": "x.jpg"}], "annotations": []},
            r"images\[0\] \(id=1\) misses fields",
        ),
        ({"images": [image], "annotations": [{"id": 7, "image_id": 1}]}, r"annotations\[0\] \(id=7\) misses"),
        ({"images": [image], "annotations": [dict(good_ann, image_id=2)]}, r"image_id=2 is not in 'images'"),
        (
            {
                "images": [image],
                "annotations": [dict(good_ann, segmentation={"size": [5, 5], "counts": "0"})],
            },
            "differs",
        ),
    ]
    for n, (data, message) in enumerate(cases):
        path = tmp_path / f"bad{n}.json"
        path.write_text(json.dumps(data))
        with pytest.raises(BadRecordError, match=rf"bad{n}\.json.*{message}"):
            import_coco(seeded, str(path), 0, "assisted_manual", "coco")
    assert snapshot(seeded) == before


def test_sa1b_file_with_bad_annotation_is_refused(seeded, tmp_path):
    before = snapshot(seeded)
    path = tmp_path / "sa_1.json"
    image = {"image_id": 1, "width": 32, "height": 24, "file_name": "sa_1.jpg"}
    path.write_text(
        json.dumps({"image": image, "annotations": [{"id": 3, "segmentation": {"size": [24, 32]}}]})
    )
    with pytest.raises(BadRecordError, match=r"sa_1\.json: annotations\[0\] \(id=3\)"):
        import_sa1b(seeded, [str(path)], 0, "fully_automatic", "sa")
    assert snapshot(seeded) == before


def test_truncated_parquet_file_is_named(seeded):
    (path,) = [p for p in seeded.fs.find(seeded.root) if "/masks/" in p]
    data = seeded.fs.cat_file(path)
    seeded.fs.pipe_file(path, data[: len(data) // 2])
    before = snapshot(seeded)
    with pytest.raises(CorruptFileError, match=rf"{path}: cannot read Parquet file of table 'masks'"):
        seeded.masks()
    assert snapshot(seeded) == before


def test_file_of_another_schema_is_named(seeded):
    foreign = seeded.path("masks", "round=0", "stage=fully_automatic", "shard-foreign.parquet")
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"mask_id": ["x"]}), sink)
    seeded.fs.pipe_file(foreign, sink.getvalue().to_pybytes())
    with pytest.raises(SchemaMismatchError, match=rf"{foreign}: file holds table '\?' schema version '\?'"):
        seeded.masks()
    images_file = [p for p in seeded.fs.find(seeded.root) if "/images/" in p][0]
    seeded.fs.pipe_file(foreign, seeded.fs.cat_file(images_file))
    with pytest.raises(
        SchemaMismatchError, match=rf"{foreign}: file holds table 'images' schema version '1'"
    ):
        seeded.masks()


def test_paths_that_escape_the_root_are_refused(seeded, make_masks):
    before = snapshot(seeded)
    df, _ = make_masks("img1", 1, seed=6)
    with pytest.raises(PathEscapeError, match=r"stage='\.\./\.\./x'"):
        seeded.write_masks(df, 0, "../../x", 0)
    with pytest.raises(PathEscapeError, match=r"shard='\.\./evil'"):
        seeded.write_masks(df, 0, "fully_automatic", "../evil")
    with pytest.raises(PathEscapeError, match=r"image_id='\.\./\.\./etc/passwd'"):
        seeded.put_embedding("../../etc/passwd", "tiny-v0", [[[0.0]]])
    with pytest.raises(PathEscapeError, match=r"model_version='a/b'"):
        seeded.has_embedding("img1", "a/b")
    with pytest.raises(PathEscapeError, match=r"table='\.\.'"):
        seeded.write_state("..", "k", {})
    with pytest.raises(PathEscapeError, match=r"images row 0 image_id"):
        seeded.write_images(pd.DataFrame({"image_id": ["../x"], "uri": ["u"], "width": [1], "height": [1]}))
    with pytest.raises(PathEscapeError, match="escapes the store root"):
        seeded.path("..", "elsewhere")
    assert snapshot(seeded) == before


def test_mask_size_is_checked_against_images_added_after_the_first_shard(seeded, make_masks, images_frame):
    """The image sizes write_masks checks against are read once per images file, and new files are seen."""
    seeded.write_images(images_frame(["img2"], height=32, width=24))
    before = snapshot(seeded)
    df, _ = make_masks("img2", 1, height=24, width=32, seed=9)
    with pytest.raises(BadRecordError, match=r"image_id=img2: mask is 24 x 32 but the image is 32 x 24"):
        seeded.write_masks(df, 0, "fully_automatic", 1)
    assert snapshot(seeded) == before


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"crop_box": [[0.0, 0.0, 5.0]] * 2}, r"row 0 image_id=img1: crop_box=.* is not \[x, y, w, h\]"),
        ({"bbox": [[0.0, 0.0, 5.0, 5.0], "wide"]}, r"column 'bbox' must hold \[x, y, w, h\] lists"),
        (
            {"point_coords": [[[1.0, 2.0]], [[1.0]]]},
            r"row 1 image_id=img1: point_coords=.* not finite \[x, y\]",
        ),
        ({"point_coords": [[[float("nan"), 2.0]], []]}, r"row 0 image_id=img1: point_coords=.* not finite"),
        ({"point_coords_json": ["[[1, 2]]", "[[1, "]}, r"row 1 image_id=img1: point_coords_json is not JSON"),
        ({"bbox_x": [0.0, 1.0]}, r"bbox needs all of \['bbox_x', 'bbox_y', 'bbox_w', 'bbox_h'\]"),
    ],
)
def test_boxes_and_points_of_the_wrong_form_are_refused(seeded, make_masks, change, message):
    before = snapshot(seeded)
    df, _ = make_masks("img1", 2, seed=10)
    if "point_coords_json" in change:
        df = df.drop(columns="point_coords")
    with pytest.raises(BadRecordError, match=message):
        seeded.write_masks(df.assign(**change), 0, "fully_automatic", 1)
    assert snapshot(seeded) == before


def test_a_box_in_both_forms_is_refused(seeded, make_masks):
    df, _ = make_masks("img1", 1, seed=11)
    both = df.assign(bbox=[[0.0, 0.0, 1.0, 1.0]], bbox_x=0.0, bbox_y=0.0, bbox_w=1.0, bbox_h=1.0)
    with pytest.raises(BadRecordError, match=r"give 'bbox' or \['bbox_x', .*\], not both"):
        seeded.write_masks(both, 0, "fully_automatic", 1)
    with pytest.raises(BadRecordError, match=r"give 'point_coords' or 'point_coords_json', not both"):
        seeded.write_masks(df.assign(point_coords_json="[]"), 0, "fully_automatic", 1)


def test_a_reader_refuses_a_store_that_is_not_there_and_creates_nothing(seeded):
    missing = seeded.url.rstrip("/") + "-mistyped"
    with pytest.raises(StoreNotFoundError, match=rf"^no store at {re.escape(missing)}: no such folder$"):
        Store(missing, storage_options=seeded.storage_options, create=False)
    assert not seeded.fs.exists(seeded.root + "-mistyped")
    assert len(Store(seeded.url, storage_options=seeded.storage_options, create=False).images()) == 1


def test_a_reader_refuses_a_folder_without_tables(store):
    # s3 has no empty folders: a prefix with no object under it is not there at all
    expected = "no such folder" if store.url.startswith("s3://") else "no images, models or masks table in it"
    with pytest.raises(StoreNotFoundError, match=expected):
        Store(store.url, storage_options=store.storage_options, create=False)


def test_an_unknown_protocol_is_named_with_the_known_ones(tmp_path):
    with pytest.raises(
        UnknownProtocolError, match=r"^unknown protocol 'fiel' in fiel:///x; known protocols: .*file"
    ):
        Store("fiel:///x")
