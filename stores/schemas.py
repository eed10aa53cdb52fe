"""Typed Arrow schemas of every table, with the schema version written into each file's metadata.

Partition columns (masks: round, stage; embeddings: model_version) live in the directory names, not in the
files, so `pandas.read_parquet(<root>/<table>)` returns them as hive partition columns.
"""

import pyarrow as pa

from .errors import SchemaMismatchError

SCHEMA_VERSION = 1
META_TABLE = b"sam_data_engine.table"
META_VERSION = b"sam_data_engine.schema_version"

_UTC_US = pa.timestamp("us", tz="UTC")
_POINT = pa.list_(pa.float64())

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
        ("bbox", pa.list_(pa.float64(), 4)),  # x, y, w, h in pixels
        ("predicted_iou", pa.float64()),
        ("stability_score", pa.float64()),
        ("point_coords", pa.list_(_POINT)),  # [[x, y], ...] prompt points in pixels
        ("crop_box", pa.list_(pa.float64())),  # x, y, w, h of the crop that produced the mask (SA-1B)
        ("source", pa.string()),  # "auto" | "model" | "human"
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

TABLES = {
    "images": IMAGES,
    "embeddings": EMBEDDINGS,
    "masks": MASKS,
    "models": MODELS,
    "rounds": ROUNDS,
    "state": STATE,
}
JSON_COLUMNS = {"models": ("config", "metrics"), "rounds": ("metrics",)}


def with_metadata(schema: pa.Schema, table: str) -> pa.Schema:
    """The schema stamped with the table name and schema version that readers check."""
    return schema.with_metadata({META_TABLE: table.encode(), META_VERSION: str(SCHEMA_VERSION).encode()})


def check_file_schema(file_schema: pa.Schema, table: str, path: str) -> None:
    """Raise SchemaMismatchError naming `path` unless the file was written for `table` at SCHEMA_VERSION."""
    meta = file_schema.metadata or {}
    found_table = meta.get(META_TABLE, b"?").decode()
    found_version = meta.get(META_VERSION, b"?").decode()
    if found_table != table or found_version != str(SCHEMA_VERSION):
        raise SchemaMismatchError(
            f"{path}: file holds table {found_table!r} schema version {found_version!r}, "
            f"expected table {table!r} schema version {SCHEMA_VERSION}"
        )
    expected = TABLES[table]
    missing = [f.name for f in expected if file_schema.get_field_index(f.name) < 0]
    if missing:
        raise SchemaMismatchError(f"{path}: file lacks columns {missing} of table {table!r}")
