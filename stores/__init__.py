"""Parquet stores on any fsspec filesystem: images, embeddings, masks, models, rounds, small state tables."""

from .errors import BadRecordError, CorruptFileError, PathEscapeError, SchemaMismatchError, StoreError
from .masks import mask_id_for
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
    "mask_id_for",
]
