"""Parquet stores on any fsspec filesystem: images, embeddings, masks, models, rounds, small state tables."""

from .coco import export_coco, import_coco
from .errors import BadRecordError, CorruptFileError, PathEscapeError, SchemaMismatchError, StoreError
from .masks import mask_id_for
from .query import decode_image_masks, masks_of_round, masks_per_image
from .sa1b import export_sa1b, import_sa1b
from .schemas import SCHEMA_VERSION
from .store import Store

__all__ = [
    "SCHEMA_VERSION",
    "BadRecordError",
    "CorruptFileError",
    "PathEscapeError",
    "SchemaMismatchError",
    "Store",
    "StoreError",
    "decode_image_masks",
    "export_coco",
    "export_sa1b",
    "import_coco",
    "import_sa1b",
    "mask_id_for",
    "masks_of_round",
    "masks_per_image",
]
