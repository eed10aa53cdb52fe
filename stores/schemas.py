"""Typed Arrow schemas of every table, with the schema version written into each file's metadata.

Partition columns (masks: round, stage; embeddings: model_version) live in the directory names, not in the
files, so `pandas.read_parquet(<root>/<table>)` returns them as hive partition columns.

Each table has its own schema version, raised when the form of its files changes; a reader refuses a file of
another version with SchemaMismatchError naming it. Masks version 2 stores bbox and crop_box as four float
columns each and point_coords as JSON text: version 1 kept them as list columns, which pandas turns into one
numpy array per row and list (about half the time of a plain `pandas.read_parquet` of a round's masks).
Masks version 3 adds `phrase`, the text prompt a mask answers (null for masks from points, boxes or people).
`Store.upgrade_masks()` rewrites masks files of versions 1 and 2 as version 3.
"""

import pyarrow as pa

from .errors import SchemaMismatchError

META_TABLE = b"sam_data_engine.table"
META_VERSION = b"sam_data_engine.schema_version"

_UTC_US = pa.timestamp("us", tz="UTC")
BBOX = ["bbox_x", "bbox_y", "bbox_w", "bbox_h"]  # masks: x, y, w, h of the mask's box, in pixels
CROP_BOX = [
    "crop_box_x",
    "crop_box_y",
    "crop_box_w",
    "crop_box_h",
]  # masks: the crop that produced it (SA-1B)

IMAGES = pa.schema(
    [
        ("image_id", pa.string()),
        ("uri", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("sha256", pa.string()),
        ("split", pa.string()),
        ("external_id", pa.int64()),  # the image id in an imported dataset (SA-1B, COCO), kept for export
        ("added_at", _UTC_US),
    ]
)

EMBEDDINGS = pa.schema(
    [
        ("image_id", pa.string()),
        ("shape", pa.list_(pa.int32())),  # C, H, W
        ("dtype", pa.string()),  # "float32" | "float16": how `data` is stored
        ("data", pa.binary()),  # little-endian C-order array bytes
        ("created_at", _UTC_US),
    ]
)
EMBEDDINGS_PARTITION = pa.schema([("model_version", pa.string())])

MASKS = pa.schema(
    [
        ("mask_id", pa.string()),
        ("image_id", pa.string()),
        ("counts", pa.string()),  # COCO compressed RLE string, column-major, of an height x width mask
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("area", pa.int64()),  # foreground pixels
        *((name, pa.float64()) for name in BBOX),
        ("predicted_iou", pa.float64()),
        ("stability_score", pa.float64()),
        ("point_coords_json", pa.string()),  # JSON [[x, y], ...]: the prompt points in pixels, as in SA-1B
        *((name, pa.float64()) for name in CROP_BOX),  # null when unknown
        ("source", pa.string()),  # "auto" | "model" | "human"
        ("phrase", pa.string()),  # the text prompt a mask answers ("every red ring"); null for any other
        ("model_version", pa.string()),
        ("annotator", pa.string()),
        ("clicks", pa.int32()),
        ("seconds", pa.float64()),
        ("created_at", _UTC_US),
        ("supersedes", pa.string()),  # mask_id this row replaces, or null
        ("deleted", pa.bool_()),  # a tombstone: the superseded mask is withdrawn
        ("external_id", pa.int64()),  # annotation id in an imported dataset, kept for export
    ]
)
MASKS_PARTITION = pa.schema([("round", pa.int32()), ("stage", pa.string())])

MODELS = pa.schema(
    [
        ("model_version", pa.string()),
        ("parent_version", pa.string()),
        ("config", pa.string()),  # JSON
        ("checkpoint_uri", pa.string()),
        ("trained_on_round", pa.int32()),
        ("metrics", pa.string()),  # JSON
        ("created_at", _UTC_US),
    ]
)

ROUNDS = pa.schema(
    [
        ("round", pa.int32()),
        ("stage", pa.string()),
        ("started_at", _UTC_US),
        ("finished_at", _UTC_US),
        ("images", pa.int64()),
        ("masks", pa.int64()),
        ("masks_per_image", pa.float64()),
        ("metrics", pa.string()),  # JSON
    ]
)

STATE = pa.schema([("key", pa.string()), ("row", pa.string()), ("updated_at", _UTC_US)])  # row: JSON object

# One row per automatic candidate mask of a model version on labelled images (tasks.calibrate): its scores, its
# area and box in pixels, and its best IoU against the ground truth (best_gt: that mask's index, -1 for none).
CALIBRATION = pa.schema(
    [
        ("image_id", pa.string()),
        ("predicted_iou", pa.float32()),
        ("stability_score", pa.float32()),
        ("area", pa.int64()),
        ("image_area", pa.int64()),
        *((name, pa.float32()) for name in ("x0", "y0", "x1", "y1")),  # the box, XYXY pixels
        ("best_iou", pa.float32()),
        ("best_gt", pa.int64()),
    ]
)

TABLES = {
    "images": IMAGES,
    "embeddings": EMBEDDINGS,
    "masks": MASKS,
    "models": MODELS,
    "rounds": ROUNDS,
    "state": STATE,
    "calibration": CALIBRATION,
}
JSON_COLUMNS = {"models": ("config", "metrics"), "rounds": ("metrics",)}
SCHEMA_VERSIONS = {
    "images": 1,
    "embeddings": 1,
    "masks": 3,
    "models": 1,
    "rounds": 1,
    "state": 1,
    "calibration": 1,
}
# what to do with a file of an older version, where there is a way
UPGRADES = {
    ("masks", version): f"Store(<root>).upgrade_masks() rewrites the store's version-{version} masks files"
    for version in ("1", "2")
}


def with_metadata(schema: pa.Schema, table: str) -> pa.Schema:
    """The schema stamped with the table name and schema version that readers check."""
    version = str(SCHEMA_VERSIONS[table]).encode()
    return schema.with_metadata({META_TABLE: table.encode(), META_VERSION: version})


def file_version(file_schema: pa.Schema) -> tuple[str, str]:
    """(table, schema version) a file says it holds, "?" for what it does not say."""
    meta = file_schema.metadata or {}
    return meta.get(META_TABLE, b"?").decode(), meta.get(META_VERSION, b"?").decode()


def check_file_schema(file_schema: pa.Schema, table: str, path: str) -> None:
    """Raise SchemaMismatchError naming `path` unless the file was written for `table` at its current version."""
    found_table, found_version = file_version(file_schema)
    if found_table != table or found_version != str(SCHEMA_VERSIONS[table]):
        upgrade = UPGRADES.get((found_table, found_version)) if found_table == table else None
        raise SchemaMismatchError(
            f"{path}: file holds table {found_table!r} schema version {found_version!r}, "
            f"expected table {table!r} schema version {SCHEMA_VERSIONS[table]}"
            + (f"; {upgrade}" if upgrade else "")
        )
    expected = TABLES[table]
    missing = [f.name for f in expected if file_schema.get_field_index(f.name) < 0]
    if missing:
        raise SchemaMismatchError(f"{path}: file lacks columns {missing} of table {table!r}")
