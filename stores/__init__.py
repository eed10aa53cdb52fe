"""Parquet stores on any fsspec filesystem: images, embeddings, masks, models, rounds, small state tables.

    store = Store("s3://bucket/engine", storage_options={"endpoint_url": "http://127.0.0.1:9000"})
    store.write_masks(df, round=0, stage="fully_automatic", shard="part-00")   # atomic; a rerun replaces it
    store.masks(round=0)                                                     # current masks as a DataFrame
    pandas.read_parquet(store.table_url("masks"), filters=[("round", "==", 0)],
                        storage_options=store.storage_options)              # the same, without this package

Credentials come from the usual s3fs/botocore settings (env, ~/.aws) or storage_options; none is ever logged.
A local S3 for trying it out: `python scripts/s3_server.py` (moto on 127.0.0.1).
"""

from .coco import export_coco, import_coco
from .errors import (
    BadRecordError,
    CorruptFileError,
    PathEscapeError,
    SchemaMismatchError,
    StoreError,
    StoreNotFoundError,
    UnknownProtocolError,
)
from .masks import mask_id_for
from .query import decode_image_masks, masks_of_round, masks_per_image
from .sa1b import export_sa1b, import_sa1b
from .schemas import BBOX, CROP_BOX, SCHEMA_VERSIONS
from .store import Store

__all__ = [
    "BBOX",
    "CROP_BOX",
    "SCHEMA_VERSIONS",
    "BadRecordError",
    "CorruptFileError",
    "PathEscapeError",
    "SchemaMismatchError",
    "Store",
    "StoreError",
    "StoreNotFoundError",
    "UnknownProtocolError",
    "decode_image_masks",
    "export_coco",
    "export_sa1b",
    "import_coco",
    "import_sa1b",
    "mask_id_for",
    "masks_of_round",
    "masks_per_image",
]
